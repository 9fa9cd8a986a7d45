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

:class:`StreamingCode2Wav` only plans and stitches: a window's mel and waveform may be
computed by the caller together with other replies' windows (the batched engine), or by
:meth:`StreamingCode2Wav.decode` alone.
"""

from __future__ import annotations

import torch

from ..events import ChunkPlan
from .dit import DitRunner, Window

BLOCK_FRAMES = 24
PAST_FRAMES = 2 * BLOCK_FRAMES
FUTURE_FRAMES = BLOCK_FRAMES
VOCODER_CONTEXT = 40
SAMPLES_PER_FRAME = 240


class WindowDecoder:
    """One voice's speech decoder: codes to mel (the DiT) and mel to waveform (the vocoder).

    ``runner`` is the DiT runner shared by every reply of a model (its tables are reused);
    without one, a runner of its own is made.
    """

    def __init__(self, token2wav, cond: torch.Tensor, ref_mel: torch.Tensor, runner: DitRunner | None = None) -> None:
        self.runner = runner or DitRunner(token2wav)
        self.vocoder = token2wav.code2wav_bigvgan_model
        self.device = self.runner.device
        self.cond = cond.to(self.device).float()
        self.reference = self.runner.reference(ref_mel)

    def window(self, codes: torch.Tensor, noise: torch.Tensor) -> Window:
        """The DiT's work for codes ``(1, n)`` starting from ``noise`` ``(1, 2n, 80)``."""
        return Window(codes.to(self.device), noise.to(self.device), self.cond, self.reference)

    @torch.no_grad()
    def mel(self, codes: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Mel ``(1, 80, 2n)`` for codes ``(1, n)``: what the DiT's ``sample()`` gives starting from ``noise``."""
        frames = codes.shape[1] * self.runner.dit.repeats
        if noise.shape[1] != frames:
            raise ValueError(f"noise covers {noise.shape[1]} frames, codes need {frames}")
        return self.runner.mel([self.window(codes, noise)])[0]

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

    def _next_end(self, start: int) -> int:
        """Where the next middle chunk, starting at ``start``, ends (the schedule's next size)."""
        return start + self.schedule[min(len(self.plans), len(self.schedule) - 1)] * BLOCK_FRAMES

    def next_plan(self) -> ChunkPlan | None:
        """The next chunk that can be decoded now, or ``None`` if it needs more codes."""
        start = self._next_start()
        if start >= self.frames and (self.finished or self.frames == 0):
            return None
        end = self._next_end(start)
        # A middle chunk needs its whole block of look-ahead; otherwise it must be the last.
        if end + FUTURE_FRAMES <= self.frames:
            return ChunkPlan(max(start - PAST_FRAMES, 0), end + FUTURE_FRAMES, start, end, last=False)
        if self.finished and start < self.frames:
            return ChunkPlan(max(start - PAST_FRAMES, 0), self.frames, start, self.frames, last=True)
        return None

    def upcoming(self, codes: int, limit: int) -> int | None:
        """The frames of the next window if ``codes`` more codes make it ready (at most ``limit`` codes in all)."""
        if self.finished:
            return None
        start = self._next_start()
        end = self._next_end(start)
        if end + FUTURE_FRAMES <= min(self.frames + 2 * codes, 2 * limit):
            return end + FUTURE_FRAMES - max(start - PAST_FRAMES, 0)
        if len(self.codes) + codes >= limit:  # the last chunk, at the length limit
            return 2 * limit - max(start - PAST_FRAMES, 0)
        return None

    def window(self, plan: ChunkPlan) -> Window:
        """The DiT's work for ``plan``: its codes and its slice of the utterance's noise."""
        codes = torch.tensor([self.codes[plan.window_start // 2: plan.window_end // 2]])
        return self.decoder.window(codes, self.noise[:, plan.window_start:plan.window_end])

    def vocoder_input(self, plan: ChunkPlan, mel: torch.Tensor) -> torch.Tensor:
        """Keep ``plan``'s frames of the window's mel; returns the mel the vocoder needs now.

        That is some already final mel before the chunk (context), then the chunk.
        """
        kept = mel[:, :, plan.keep_start - plan.window_start: plan.keep_end - plan.window_start]
        self._mel = kept if self._mel is None else torch.cat([self._mel, kept], dim=2)
        self.plans.append(plan)
        return self._mel[:, :, max(plan.keep_start - VOCODER_CONTEXT, 0):plan.keep_end]

    def cut(self, plan: ChunkPlan, wave: torch.Tensor) -> torch.Tensor:
        """The part of the vocoder's output for ``plan`` that is final now (CPU, 1-D)."""
        voc_start = max(plan.keep_start - VOCODER_CONTEXT, 0)
        emit_end = plan.audio_end
        piece = wave[(self._emitted_frames - voc_start) * SAMPLES_PER_FRAME:(emit_end - voc_start) * SAMPLES_PER_FRAME]
        self._emitted_frames = emit_end
        return piece

    def decode(self, plan: ChunkPlan) -> torch.Tensor:
        """Run one planned chunk alone; returns the float waveform that is now final (CPU, 1-D)."""
        mel = self.decoder.runner.mel([self.window(plan)])[0]
        return self.cut(plan, self.decoder.wave(self.vocoder_input(plan, mel)))
