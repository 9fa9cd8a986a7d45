"""What the engines and the model service share: the job an engine runs and what it reports.

The service (:mod:`.service`) depends on this module and on nothing engine-specific; each
engine (:mod:`.reference`, :mod:`.streaming`) depends on this module and on the model
code. No engine imports another, and no engine imports the service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..api import Request
from ..events import Event, Trace
from ..prompt import PreparedInputs
from ..voices import Voice

if TYPE_CHECKING:
    from .sessions import CacheSlot

#: The Talker's two end-of-speech codes (generate() hard-codes them).
TALKER_STOP_CODES = (8292, 8294)


@dataclass(frozen=True)
class Job:
    """A request ready for an engine: its voice looked up and its seed fixed."""

    request: Request
    #: ``None``: a text-only reply.
    voice: Voice | None
    seed: int
    #: The conversation's model cache, for an engine that continues it (``None``: run it all).
    slot: CacheSlot | None = None

    @property
    def limits(self):
        return self.request.limits


class Cancel:
    """Set when any of the given tokens is set (the caller's, and the stream's own closing)."""

    def __init__(self, *tokens: Any) -> None:
        self._tokens = [t for t in tokens if t is not None]

    def is_set(self) -> bool:
        return any(t.is_set() for t in self._tokens)


@dataclass
class EngineResult:
    """What an engine reports when it has finished a request."""

    reason: str
    text_tokens: int
    codec_codes: int
    extra: dict[str, float] = field(default_factory=dict)
    trace: Trace = field(default_factory=Trace)
    #: The most replies made together in one step with this one (itself included); 1: made alone.
    batch_peak: int = 1


class Engine(Protocol):
    """Runs one prepared job, calling ``emit`` with each event as it is produced."""

    name: str
    #: Whether it can speak an exact text (:attr:`Request.speak_text`).
    speaks_text: bool
    #: Whether it continues a conversation's KV cache across turns (:attr:`Job.slot`).
    reuses_cache: bool
    #: Whether it makes many replies at once (then it is a :class:`BatchEngine`).
    batches: bool

    def run(self, loaded, prepared: PreparedInputs | None, job: Job,
            emit: Callable[[Event], None], cancel: Cancel) -> EngineResult: ...


class BatchEngine(Engine, Protocol):
    """An engine that advances many replies at once, a step at a time (the scheduler drives it)."""

    def setup(self, loaded, max_batch: int) -> None:
        """Prepare for batches of up to ``max_batch`` replies (once per model)."""
        ...

    def start(self, loaded, prepared: PreparedInputs | None, job: Job, emit: Callable[[Event], None]):
        """A new reply: an object with ``done``, ``error``, ``cancel()`` and ``result()``."""
        ...

    def iterate(self, loaded, replies: list) -> None:
        """Advance each of ``replies`` by one step."""
        ...


def to_int16(wave: np.ndarray) -> np.ndarray:
    """Float waveform in [-1, 1] to int16 PCM (clipped, rounded)."""
    return np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)


def to_device(tensors: dict, loaded) -> dict:
    """Processor outputs on the model's device, floats in the model's dtype."""
    import torch

    moved = {}
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor):
            value = value.to(loaded.device)
            if value.is_floating_point():
                value = value.to(loaded.dtype)
        moved[key] = value
    return moved


def reason_for(reply: list[int], eos, max_new_tokens: int) -> str:
    """``finished`` when the reply ended by itself, ``length`` when it hit the limit."""
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
    if reply and reply[-1] in eos_ids:
        return "finished"
    return "length" if len(reply) >= max_new_tokens else "finished"


def speech_codes(talker_ids: list[int]) -> list[int]:
    """Codec codes up to (not including) the first stop code."""
    for index, code in enumerate(talker_ids):
        if code in TALKER_STOP_CODES:
            return talker_ids[:index]
    return talker_ids
