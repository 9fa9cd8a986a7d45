"""The Talker's sampling, one code per reply, for many replies in one call.

The processors are those ``generate()`` builds for the Talker, applied row-wise, and the
draw is ``torch.multinomial``'s own method, with each reply's own generator: a reply gets
the codes it would get alone, and the same as ``generate()`` for the same seed.
"""

from __future__ import annotations

import weakref

import torch

from .common import TALKER_STOP_CODES


def sample(steppers: list, logits: torch.Tensor) -> list[int]:
    """One code per Talker stepper from its row of ``(steppers, vocab)`` logits.

    Row-wise throughout, in one call per operation: the repetition penalty (each row's ids,
    padded with its own first id, which changes nothing), the suppressions and warpers,
    then ``torch.multinomial``'s own method for one sample, ``argmax(p / q)`` with ``q``
    exponential, ``q`` drawn from each row's generator exactly as multinomial draws it.
    """
    first = steppers[0]
    longest = max(s.ids.shape[1] for s in steppers)
    ids = torch.empty((len(steppers), longest), dtype=torch.long, device=first.device)
    for row, stepper in enumerate(steppers):
        own = stepper.ids[0]
        ids[row, :len(own)] = own
        ids[row, len(own):] = own[0]
    scores = first.processors(ids, logits.float())
    if first.sampling:
        probs = torch.softmax(scores, dim=-1)
        noise = torch.empty_like(probs)
        for row, stepper in enumerate(steppers):
            noise[row].exponential_(1, generator=stepper.generator)
        codes = torch.argmax(probs / noise, dim=-1).tolist()
    else:
        codes = scores.argmax(dim=-1).tolist()
    for stepper, code in zip(steppers, codes, strict=True):
        stepper.took(int(code))
    return codes


class _Suppress:
    """``SuppressTokensLogitsProcessor`` with its mask made once, not at every step (the same scores)."""

    def __init__(self, tokens: list[int], vocab: int, device) -> None:
        self.mask = torch.isin(torch.arange(vocab, device=device), torch.tensor(tokens, device=device))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, -float("inf"), scores)


class _Processors(list):
    """The processors applied in order (a plain loop: ``LogitsProcessorList`` inspects each one's signature
    at every call, which cost more than the processing itself)."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


_PROCESSORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def talker_processors(talker, decodable_codes: int, sampling: bool, device) -> _Processors:
    """The Talker's logits processors, as generate() builds them (made once per model and device).

    One addition: ids the speech decoder has no embedding for (>= its num_embeds, except
    the stop codes) are suppressed; generate() would crash in token2wav on them. With a
    trained Talker they carry no probability, so this changes nothing in practice.
    """
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    made = _PROCESSORS.setdefault(talker, {})
    key = (decodable_codes, sampling, str(device))
    if key not in made:
        vocab = talker.config.vocab_size
        suppressed = {talker.codec_bos_token} | {i for i in range(decodable_codes, vocab)
                                                 if i not in TALKER_STOP_CODES}
        processors = [RepetitionPenaltyLogitsProcessor(1.05), _Suppress(sorted(suppressed), vocab, device)]
        if sampling:
            processors += [TemperatureLogitsWarper(0.9), TopKLogitsWarper(40), TopPLogitsWarper(0.8)]
        made[key] = _Processors(processors)
    return made[key]
