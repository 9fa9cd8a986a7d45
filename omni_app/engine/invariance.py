"""Whether a reply's numbers could depend on what else is in its batch, checked on the machine at hand.

A reply made in a batch must equal the same request made alone: the same text, codes and
waveform. Every batched operation is row-wise, but matrix and convolution kernels choose
their method by the shape of the whole call, and a different method can round a row
differently. Whether that happens is a property of the kernels on this machine (x86 CPU
BLAS: one row, or a row count that is not a multiple of 4, takes another path than full
tiles of 4; oneDNN convolutions: some batch sizes take another path than batch 1). So the
engine asks, once per loaded model, with the model's own layers and random inputs:

- decode steps: the smallest ``quantum`` such that every row of a step padded to a
  multiple of it gets the same numbers at any position and any padded row count up to the
  batch limit (failing all, steps always run at the full batch limit);
- DiT windows and vocoder inputs: the smallest number (1, 2 or 4) such that stacking equal
  lengths in multiples of it (padded with spare items) leaves each output unchanged.

On an x86 CPU with oneDNN a lone vocoder input takes another path than any even number
of them (which agree with each other), so there every vocoder call runs an even number of
inputs, a lone one beside a spare. That costs a reply alone some speed (an input of 118
frames on the tiny model: 70 ms alone, 112 ms with its spare) and buys batches more (8
such inputs together: about 50 ms each). What fails every check is not batched, so
equality holds wherever the checks hold.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch

from .rows import padded

log = logging.getLogger(__name__)

#: Row multiples tried for decode steps, smallest first.
QUANTA = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Invariance:
    """How the batched engine keeps every reply equal to itself made alone."""

    #: Decode steps pad their rows to a multiple of this.
    quantum: int
    #: DiT windows of equal length are stacked, padded to a multiple of this (0: one at a time).
    window_quantum: int
    #: Vocoder inputs of equal length are stacked, padded to a multiple of this (0: one at a time).
    vocoder_quantum: int
    #: ``False`` when not even steps at the full batch limit were row-independent (logged).
    exact: bool = True

    def describe(self) -> str:
        def stacking(quantum: int) -> str:
            if not quantum:
                return "one at a time"
            return "stacked" + (f" in multiples of {quantum}" if quantum > 1 else "")

        return (f"decode rows padded to a multiple of {self.quantum}; DiT windows {stacking(self.window_quantum)}; "
                f"vocoder inputs {stacking(self.vocoder_quantum)}")


_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def invariance(model, max_batch: int) -> Invariance:
    """The checks' outcome for ``model`` (a Qwen2.5-Omni) and batches of up to ``max_batch``; done once per model."""
    per_model = _FOUND.setdefault(model, {})
    if max_batch not in per_model:
        per_model[max_batch] = _probe(model, max_batch)
        log.info("batching up to %d replies: %s", max_batch, per_model[max_batch].describe())
        if not per_model[max_batch].exact:
            log.warning("this machine's matrix kernels round a row differently depending on the batch: replies "
                        "made together may differ slightly from the same requests made alone")
    return per_model[max_batch]


@torch.no_grad()
def _probe(model, max_batch: int) -> Invariance:
    generator = torch.Generator(device="cpu").manual_seed(0)
    checks = [_linear_check(layer, generator, max_batch) for layer in _decode_linears(model)]
    quantum = _smallest(lambda q: all(check(q) for check in checks))
    exact = True
    if quantum is None:  # one fixed row count for every step: all that is left is the row's position
        quantum = max_batch
        exact = all(check(max_batch, fixed=True) for check in checks)
    token2wav = getattr(model, "token2wav", None)
    window = vocoder = 0
    if token2wav is not None and max_batch > 1:
        window = _smallest(_window_check(token2wav, generator, max_batch), QUANTA[:3]) or 0
        vocoder = _smallest(_vocoder_check(token2wav, generator, max_batch), QUANTA[:3]) or 0
    return Invariance(quantum, window, vocoder, exact)


def _smallest(passes, candidates=QUANTA) -> int | None:
    """The smallest candidate quantum that ``passes``."""
    return next((candidate for candidate in candidates if passes(candidate)), None)


def _consistent(fn, inputs: torch.Tensor, quantum: int, top: int, shifts=(0, 1), fixed: bool = False) -> bool:
    """``fn`` gives each item of ``inputs`` the same output in every batch of a multiple of ``quantum`` items up to
    ``top``, at any position in it (only batches of ``top`` items when ``fixed``)."""
    whole = fn(inputs[:top])
    sizes = [top] if fixed else sorted({quantum, 2 * quantum, top} & set(range(quantum, top + 1, quantum)))
    for rows in sizes:
        for shift in shifts:
            moved = torch.roll(inputs[:top], shift, dims=0)[:rows]
            if not torch.equal(fn(moved), torch.roll(whole, shift, dims=0)[:rows]):
                return False
    return True


def _decode_linears(model) -> list[torch.nn.Linear]:
    """One of each linear layer a decode step runs (the layers of a decoder share their shapes)."""
    thinker, talker = model.thinker, getattr(model, "talker", None)
    found = [thinker.lm_head, *_layer_linears(thinker.model.language_model.layers[0])]
    if talker is not None:
        found += [talker.thinker_to_talker_proj, talker.codec_head, *_layer_linears(talker.model.layers[0])]
    return found


def _layer_linears(layer) -> list[torch.nn.Linear]:
    attn, mlp = layer.self_attn, layer.mlp
    return [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]


def _linear_check(layer: torch.nn.Linear, generator: torch.Generator, max_batch: int):
    weight = layer.weight
    top = padded(max_batch, QUANTA[-1])
    inputs = torch.randn((top, 1, weight.shape[1]), generator=generator).to(weight.device, weight.dtype)

    def check(quantum: int, fixed: bool = False) -> bool:
        return _consistent(layer, inputs, quantum, padded(max_batch, quantum),
                           shifts=sorted({0, 1, quantum - 1}), fixed=fixed)

    return check


def _window_check(token2wav, generator: torch.Generator, max_batch: int):
    """DiT windows of 7 codes (14 frames: not a multiple of 4), stacked, against the same windows alone."""
    from .dit import DitRunner, Window

    runner = DitRunner(token2wav, num_steps=2)
    dit = runner.dit
    count, codes = padded(max_batch, 4), 7
    reference = runner.reference(torch.randn((1, 400, dit.config.mel_dim), generator=generator))
    windows = [Window(torch.randint(0, 100, (1, codes), generator=generator).to(runner.device),
                      torch.randn((1, codes * dit.repeats, dit.config.mel_dim), generator=generator).to(runner.device),
                      torch.randn((1, dit.config.enc_emb_dim), generator=generator).to(runner.device), reference)
               for _ in range(count)]
    order = torch.arange(count)

    def mel(picked: torch.Tensor) -> torch.Tensor:
        return torch.cat(runner.mel([windows[int(i)] for i in picked]), dim=0)

    return lambda quantum: _consistent(mel, order, quantum, min(count, padded(max_batch, quantum)))


def _vocoder_check(token2wav, generator: torch.Generator, max_batch: int):
    """Vocoder inputs of 48 frames, stacked, against the same inputs in other batches."""
    vocoder = token2wav.code2wav_bigvgan_model
    weight = next(vocoder.parameters())
    count = padded(max_batch, 4)
    mels = (torch.randn((count, 80, 48), generator=generator) - 5).to(weight.device, weight.dtype)

    def wave(batch: torch.Tensor) -> torch.Tensor:
        return vocoder(batch).reshape(batch.shape[0], -1)

    return lambda quantum: _consistent(wave, mels, quantum, min(count, padded(max_batch, quantum)))
