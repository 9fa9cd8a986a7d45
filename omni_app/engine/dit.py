"""The speech decoder's DiT, run for several windows at once with nothing computed twice.

Token2wav's DiT turns codes into mel by integrating a flow (RK4, 36 evaluations of the
whole DiT per window, each on a classifier-free-guidance pair of rows). transformers'
``forward`` recomputes per evaluation what does not change during a window: the speaker
encoder's output for the reference mel, the block masks, the rotary tables, and the time
conditioning of every layer, which depends only on the time point (the same 36 points in
every window). :class:`DitRunner` computes the window's constants once, keeps the time
conditioning per time point for the life of the model, and evaluates the layers with the
model's own modules in the order ``forward`` does, so one window's mel is bit for bit what
``forward`` gives (tested).

Windows of equal length from different replies are stacked into one batch of rows. Every
operation on them is row-wise (norms, projections, the attention of each window within
itself); the time conditioning, computed on a pair of rows as a lone window computes it,
is broadcast. So a stacked window gets the mel it would get alone, where the matrix
kernels give each row the same result whatever the row count: the engine checks this on
the machine at hand (:mod:`.invariance`) and stacks only if it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Window:
    """One window of one reply: its codes, its slice of the reply's noise, its voice."""

    #: ``(1, n)`` codec codes.
    codes: torch.Tensor
    #: ``(1, 2n, 80)`` starting noise.
    noise: torch.Tensor
    #: ``(1, 192)`` speaker vector of the voice.
    cond: torch.Tensor
    #: ``(2, enc_dim)``: the speaker encoder's output for the voice's reference mel and for
    #: silence (:meth:`DitRunner.reference`).
    reference: torch.Tensor

    @property
    def frames(self) -> int:
        return int(self.noise.shape[1])


class DitRunner:
    """Runs the DiT's flow for windows, alone or stacked (module docstring)."""

    def __init__(self, token2wav, num_steps: int = 10, guidance_scale: float = 0.5,
                 sway_coefficient: float = -1.0) -> None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.dit = token2wav.code2wav_dit_model
        self.device = next(self.dit.parameters()).device
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.sway = sway_coefficient
        self.cfg = guidance_scale >= 1e-5
        implementation = self.dit.config._attn_implementation
        self._attention = ALL_ATTENTION_FUNCTIONS.get(implementation, sdpa_attention_forward)
        #: Time point -> (time embedding of 2 rows, per layer its AdaLN chunks, final AdaLN chunks).
        self._time: dict[float, tuple] = {}
        #: Window length -> rotary tables for 2 rows; (length, look back, look ahead) -> block mask.
        self._rotary: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._masks: dict[tuple[int, int, int], torch.Tensor] = {}

    @torch.no_grad()
    def reference(self, ref_mel: torch.Tensor) -> torch.Tensor:
        """The speaker encoder's output for a voice's ``(1, 400, 80)`` reference mel (and for silence, with guidance).

        ``forward`` recomputes it at each of the 36 evaluations; a voice needs it once.
        """
        ref_mel = ref_mel.to(self.device).float()
        if self.cfg:
            ref_mel = torch.cat([ref_mel, torch.zeros_like(ref_mel)], dim=0)
        return self.dit.input_embed.spk_encoder(ref_mel)

    def times(self) -> torch.Tensor:
        """The flow's time points, as ``sample()`` makes them."""
        times = torch.linspace(0, 1, self.num_steps, device=self.device, dtype=torch.float32)
        if self.sway is not None:
            times += self.sway * (torch.cos(torch.pi / 2 * times) - 1 + times)
        return times

    @torch.no_grad()
    def mel(self, windows: list[Window]) -> list[torch.Tensor]:
        """Mel ``(1, 80, frames)`` of each window; all windows must have the same length."""
        from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

        frames = windows[0].frames
        if any(w.frames != frames or w.codes.shape[1] * self.dit.repeats != frames for w in windows):
            raise ValueError("stacked windows must have the same length, with noise for every frame")
        count = len(windows)
        constant = self._constant(windows, frames)
        rows = constant.shape[0]
        rotary = self._rotary_tables(frames, rows)
        masks = [self._mask(frames, block.look_backward_block, block.look_ahead_block).expand(
            rows, self.dit.num_attention_heads, frames, frames) for block in self.dit.transformer_blocks]

        # The DiT's input rows: the state (twice, with guidance) beside the constant columns,
        # written into one buffer instead of concatenated anew at each evaluation.
        mel_dim = windows[0].noise.shape[-1]
        inputs = torch.empty((rows, frames, mel_dim + constant.shape[-1]), dtype=constant.dtype, device=self.device)
        inputs[:, :, mel_dim:] = constant

        def velocity(time_step, state):
            inputs[:count, :, :mel_dim] = state
            if self.cfg:
                inputs[count:, :, :mel_dim] = state
            out = self._evaluate(inputs, rotary, masks, time_step, count)
            if not self.cfg:
                return out
            guided, null = torch.chunk(out, 2, dim=0)
            return guided + (guided - null) * self.guidance_scale

        noise = torch.cat([w.noise.to(self.device) for w in windows], dim=0)
        trajectory = RungeKutta4ODESolver(function=velocity, initial_value=noise).integrate(self.times())
        mel = trajectory[-1].permute(0, 2, 1)
        return [mel[i:i + 1] for i in range(count)]

    def _constant(self, windows: list[Window], frames: int) -> torch.Tensor:
        """The input rows that stay fixed during a window: reference, codes and speaker, per guidance row."""
        dit = self.dit
        guided, null = [], []
        for window in windows:
            codes = window.codes.to(self.device)
            speaker = window.cond.to(self.device).float().unsqueeze(1).repeat(1, frames, 1)
            reference = window.reference.unsqueeze(1).repeat(1, frames, 1)
            guided.append(torch.cat((reference[:1], dit.text_embed(codes, drop_code=False), speaker), dim=-1))
            if self.cfg:
                null.append(torch.cat((reference[1:2], dit.text_embed(codes, drop_code=True),
                                       torch.zeros_like(speaker)), dim=-1))
        return torch.cat(guided + null, dim=0)

    def _evaluate(self, inputs, rotary, masks, time_step, count: int) -> torch.Tensor:
        """One evaluation of the DiT on all rows: ``forward``'s layers, in its order."""
        from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
            apply_rotary_pos_emb,
            deinterleave_head_dim,
        )

        dit = self.dit
        layers, final = self._time_conditioning(time_step, count)
        hidden = dit.input_embed.proj(inputs)
        batch = hidden.shape[0]
        for block, (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), mask in zip(
                dit.transformer_blocks, layers, masks, strict=True):
            norm = block.attn_norm.norm(hidden) * (1 + scale_msa[:, None]) + shift_msa[:, None]
            attn = block.attn
            query, key, value = attn.to_q(norm), attn.to_k(norm), attn.to_v(norm)
            head_dim = key.shape[-1] // attn.heads
            query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            # As the model was trained: rotary positions on the first head only, interleaved layout.
            query[:, :1], key[:, :1] = apply_rotary_pos_emb(deinterleave_head_dim(query[:, :1]),
                                                            deinterleave_head_dim(key[:, :1]), *rotary)
            weights, _ = self._attention(attn, query, key, value, attention_mask=mask, is_causal=False)
            weights = weights.reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
            hidden = hidden + gate_msa.unsqueeze(1) * attn.to_out[1](attn.to_out[0](weights))
            norm = block.ff_norm(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            hidden = hidden + gate_mlp.unsqueeze(1) * block.ff(norm)
        scale, shift = final
        hidden = dit.norm_out.norm(hidden) * (1 + scale)[:, None, :] + shift[:, None, :]
        return dit.proj_out(hidden)

    def _time_conditioning(self, time_step: torch.Tensor, count: int):
        """Each layer's AdaLN chunks at this time point, for ``count`` windows' rows.

        Computed once per time point on the two rows a lone window has (as ``forward`` does),
        then broadcast: guided rows take the first row's values, unguided the second's.
        """
        key = float(time_step)
        cached = self._time.get(key)
        if cached is None:
            dit = self.dit
            embedding = dit.time_embed(time_step.repeat(2 if self.cfg else 1))
            layers = [torch.chunk(block.attn_norm.linear(block.attn_norm.silu(embedding)), 6, dim=1)
                      for block in dit.transformer_blocks]
            final = torch.chunk(dit.norm_out.linear(dit.norm_out.silu(embedding)), 2, dim=1)
            cached = self._time[key] = (layers, final)
        layers, final = cached
        if count == 1:
            return layers, final

        def spread(chunk: torch.Tensor) -> torch.Tensor:
            return torch.cat([row.expand(count, -1) for row in chunk.split(1, dim=0)], dim=0)

        return [tuple(spread(c) for c in chunks) for chunks in layers], tuple(spread(c) for c in final)

    def _rotary_tables(self, frames: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        tables = self._rotary.get(frames)
        if tables is None:
            lone = 2 if self.cfg else 1
            positions = torch.arange(frames, device=self.device)[None, :].repeat(lone, 1)
            probe = torch.empty((lone, frames, self.dit.hidden_size), device=self.device)
            tables = self._rotary[frames] = self.dit.rotary_embed(probe, positions)
        cos, sin = tables
        return cos[:1].expand(rows, -1, -1), sin[:1].expand(rows, -1, -1)

    def _mask(self, frames: int, back: int, ahead: int) -> torch.Tensor:
        """What a frame may attend to in a layer that looks ``back``/``ahead`` blocks: ``(1, 1, T, T)``.

        Additive (0 or -inf), which is what attention makes of ``forward``'s boolean mask at
        every call (the same scores result); made once, it is not converted 36 times a window.
        """
        key = (frames, back, ahead)
        mask = self._masks.get(key)
        if mask is None:
            blocks = torch.arange(frames, device=self.device) // self.dit.block_size
            difference = blocks.unsqueeze(0) - blocks.unsqueeze(1)
            allowed = (difference >= -float(back)) & (difference <= float(ahead))
            dtype = next(self.dit.parameters()).dtype
            mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill(~allowed, float("-inf"))
            mask = self._masks[key] = mask[None, None]
        return mask

    def compile(self) -> None:
        """``torch.compile`` the evaluation: on a GPU with CUDA graphs (a window's shapes are fixed, so
        each of its 36 evaluations replays one graph), elsewhere as plain compiled kernels.

        Compiled kernels fuse operations and round differently from eager ones, and each
        number of stacked windows is its own graph: replies then equal themselves alone
        only as far as those graphs agree (not checked).
        """
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self._evaluate = torch.compile(self._evaluate, mode=mode, dynamic=False)
