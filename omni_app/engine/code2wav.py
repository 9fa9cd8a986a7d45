"""Streaming code2wav: the speech decoder run in sliding windows as codes arrive.

Token2wav is a flow-matching DiT (codes -> mel, 2 mel frames per code) and a BigVGAN
vocoder (mel -> 24 kHz, 240 samples per frame). The DiT's attention works on blocks of
24 frames and, through its look-back/look-ahead layers, sees 2 blocks back and 1 block
ahead. So a chunk of blocks can be decoded once the block after it exists, in a window
that adds 2 blocks of past context; the window's edge blocks are recomputed by the next
window and thrown away here.

One noise tensor is drawn per utterance and sliced per window, so overlapping windows
start from the same noise as the whole-utterance decode would. The vocoder gets 40 frames
of already decoded mel before each chunk and holds back the last 20 frames of output until
the next chunk, so every emitted sample had context on both sides; the concatenated audio
is exactly as long as a whole-utterance decode.
"""

from __future__ import annotations

import torch

from ..events import ChunkPlan

BLOCK_FRAMES = 24
PAST_FRAMES = 2 * BLOCK_FRAMES
FUTURE_FRAMES = BLOCK_FRAMES
VOCODER_CONTEXT = 40
SAMPLES_PER_FRAME = 240


class WindowDecoder:
    """Decode codes to mel and mel to waveform with the model's own token2wav modules."""

    def __init__(self, token2wav, cond: torch.Tensor, ref_mel: torch.Tensor, num_steps: int = 10,
                 guidance_scale: float = 0.5, sway_coefficient: float = -1.0) -> None:
        self.dit = token2wav.code2wav_dit_model
        self.vocoder = token2wav.code2wav_bigvgan_model
        self.device = next(self.dit.parameters()).device
        self.cond = cond.to(self.device).float()
        self.ref_mel = ref_mel.to(self.device).float()
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.sway = sway_coefficient
        self._reference: torch.Tensor | None = None

    @torch.no_grad()
    def mel(self, codes: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Mel ``(1, 80, 2n)`` for codes ``(1, n)``, starting the flow from ``noise`` ``(1, 2n, 80)``.

        The computation of the DiT's ``sample()``, with two changes that keep the result
        bit-identical: the starting noise is passed in (so that windows agree with each
        other), and the speaker encoder's output for ``ref_mel``, which ``forward()`` would
        recompute at each of the 36 ODE evaluations, is computed once per utterance.
        """
        from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

        frames = codes.shape[1] * self.dit.repeats
        if noise.shape[1] != frames:
            raise ValueError(f"noise covers {noise.shape[1]} frames, codes need {frames}")
        cfg = self.guidance_scale >= 1e-5
        dit = self.dit
        speaker = self.cond.unsqueeze(1).repeat(1, frames, 1)
        code_embed = dit.text_embed(codes, drop_code=False)
        if cfg:
            # Classifier-free guidance: a second row without codes, speaker and reference.
            speaker = torch.cat([speaker, torch.zeros_like(speaker)], dim=0)
            code_embed = torch.cat([code_embed, dit.text_embed(codes, drop_code=True)], dim=0)
        reference = self._reference_embedding(cfg).unsqueeze(1).repeat(1, frames, 1)
        rows = speaker.shape[0]
        positions = torch.arange(frames, device=codes.device)[None, :].repeat(rows, 1)

        def velocity(time_step, state):
            hidden = torch.cat([state, state], dim=0) if cfg else state
            time_embedding = dit.time_embed(time_step.repeat(rows) if time_step.ndim == 0 else time_step)
            hidden = dit.input_embed.proj(torch.cat((hidden, reference, code_embed, speaker), dim=-1))
            rotary = dit.rotary_embed(hidden, positions)
            block_diff = dit._create_block_diff(hidden)
            for block in dit.transformer_blocks:
                hidden = block(hidden, time_embedding, position_embeddings=rotary, block_diff=block_diff)
            out = dit.proj_out(dit.norm_out(hidden, time_embedding))
            if not cfg:
                return out
            guided, null = torch.chunk(out, 2, dim=0)
            return guided + (guided - null) * self.guidance_scale

        times = torch.linspace(0, 1, self.num_steps, device=codes.device, dtype=speaker.dtype)
        if self.sway is not None:
            times += self.sway * (torch.cos(torch.pi / 2 * times) - 1 + times)
        trajectory = RungeKutta4ODESolver(function=velocity, initial_value=noise).integrate(times)
        return trajectory[-1].permute(0, 2, 1)

    def _reference_embedding(self, cfg: bool) -> torch.Tensor:
        if self._reference is None:
            ref = torch.cat([self.ref_mel, torch.zeros_like(self.ref_mel)], dim=0) if cfg else self.ref_mel
            self._reference = self.dit.input_embed.spk_encoder(ref)
        return self._reference

    @torch.no_grad()
    def wave(self, mel: torch.Tensor) -> torch.Tensor:
        """Float waveform (CPU, 1-D) for mel ``(1, 80, frames)``."""
        return self.vocoder(mel).reshape(-1)


class StreamingCode2Wav:
    """Feed codes as the Talker emits them; take audio chunks as soon as they are final.

    ``schedule`` gives chunk sizes in blocks of 24 frames; the last entry repeats. A small
    first chunk gives early audio, larger later ones keep the context overhead low.
    """

    def __init__(self, decoder: WindowDecoder, noise: torch.Tensor, schedule: tuple[int, ...]) -> None:
        if not schedule or min(schedule) < 1:
            raise ValueError("chunk schedule must be a non-empty list of positive block counts")
        self.decoder = decoder
        self.noise = noise
        self.schedule = schedule
        self.codes: list[int] = []
        self.finished = False
        self.plans: list[ChunkPlan] = []
        self._mel: torch.Tensor | None = None  # kept mel frames so far (1, 80, frames)
        self._emitted_frames = 0  # waveform emitted up to this frame

    @property
    def frames(self) -> int:
        return len(self.codes) * 2

    def add(self, code: int) -> None:
        self.codes.append(int(code))

    def finish(self) -> None:
        """No more codes will come: the rest becomes the last chunk(s)."""
        self.finished = True

    @property
    def done(self) -> bool:
        return self.finished and self._next_start() >= self.frames

    def _next_start(self) -> int:
        return self.plans[-1].keep_end if self.plans else 0

    def next_plan(self) -> ChunkPlan | None:
        """The next chunk that can be decoded now, or ``None`` if it needs more codes."""
        start = self._next_start()
        if start >= self.frames and (self.finished or self.frames == 0):
            return None
        size = self.schedule[min(len(self.plans), len(self.schedule) - 1)] * BLOCK_FRAMES
        end = start + size
        # A middle chunk needs its whole block of look-ahead; otherwise it must be the last.
        if end + FUTURE_FRAMES <= self.frames:
            return ChunkPlan(max(start - PAST_FRAMES, 0), end + FUTURE_FRAMES, start, end, last=False)
        if self.finished and start < self.frames:
            return ChunkPlan(max(start - PAST_FRAMES, 0), self.frames, start, self.frames, last=True)
        return None

    def decode(self, plan: ChunkPlan) -> torch.Tensor:
        """Run one planned chunk; returns the float waveform that is now final (CPU, 1-D)."""
        codes = torch.tensor([self.codes[plan.window_start // 2: plan.window_end // 2]], device=self.decoder.device)
        noise = self.noise[:, plan.window_start:plan.window_end].to(self.decoder.device)
        mel = self.decoder.mel(codes, noise)
        kept = mel[:, :, plan.keep_start - plan.window_start: plan.keep_end - plan.window_start]
        self._mel = kept if self._mel is None else torch.cat([self._mel, kept], dim=2)
        self.plans.append(plan)
        # Vocoder: some already final mel before the chunk, hold back the tail until the next one.
        voc_start = max(plan.keep_start - VOCODER_CONTEXT, 0)
        wave = self.decoder.wave(self._mel[:, :, voc_start:plan.keep_end])
        emit_end = plan.audio_end
        piece = wave[(self._emitted_frames - voc_start) * SAMPLES_PER_FRAME:(emit_end - voc_start) * SAMPLES_PER_FRAME]
        self._emitted_frames = emit_end
        return piece
