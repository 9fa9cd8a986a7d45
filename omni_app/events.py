"""The stream vocabulary: what a model service yields, from engine to browser.

A stream is a sequence of :class:`TextDelta`, :class:`AudioChunk` and :class:`Notice`
events that always ends with exactly one :class:`Done`. Errors are not events: they are
raised from the stream (an :class:`~omni_app.errors.OmniError` for the user's mistakes).
Everything here is plain data (numbers, strings, numpy arrays): events cross threads,
processes (ZeroGPU) and HTTP unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Literal, Union

import numpy as np

from .config import CODES_PER_SECOND

#: Why a stream ended: the model finished, a length limit was hit, or the caller cancelled.
DoneReason = Literal["finished", "length", "cancelled"]


@dataclass(frozen=True)
class TextDelta:
    """New text of the reply, always whole characters (never a split UTF-8 sequence)."""

    text: str


@dataclass(frozen=True)
class AudioChunk:
    """A piece of the spoken reply: mono int16 samples at ``sample_rate`` Hz."""

    sample_rate: int
    samples: np.ndarray

    def __post_init__(self) -> None:
        if self.samples.dtype != np.int16 or self.samples.ndim != 1:
            raise TypeError("AudioChunk.samples must be a 1-D int16 array")

    @property
    def seconds(self) -> float:
        """Duration of this chunk in seconds."""
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class Notice:
    """Something the user should know about this reply that is not an error."""

    message: str
    level: Literal["info", "warning"] = "warning"
    #: Set while the request waits for the model: how many requests are ahead of it.
    queue_position: int | None = None


#: Mel frames of a chunk the streaming vocoder holds back until the next chunk gives them
#: context on both sides (all but the last chunk).
VOCODER_HOLD = 20


@dataclass(frozen=True)
class ChunkPlan:
    """One decoded speech chunk, in mel frames (100 per second): the decoder's window and
    the frames kept from it."""

    window_start: int
    window_end: int
    keep_start: int
    keep_end: int
    last: bool

    @property
    def audio_end(self) -> int:
        """The mel frame up to which this chunk's audio was delivered."""
        return self.keep_end if self.last else self.keep_end - VOCODER_HOLD


@dataclass(frozen=True)
class Trace:
    """What the model produced for one reply, for inspection and tests."""

    prompt_ids: tuple[int, ...] = ()
    reply_ids: tuple[int, ...] = ()
    codes: tuple[int, ...] = ()
    #: Streaming engine only: the speech decoder's chunks.
    chunks: tuple[ChunkPlan, ...] = ()
    #: Streaming engine only: (seconds since start, "token" | "code" | "chunk", running count).
    timeline: tuple[tuple[float, str, int], ...] = ()


@dataclass(frozen=True)
class Stats:
    """Measurements of one reply. Times are seconds since the request was started."""

    time_to_first_text: float | None
    time_to_first_audio: float | None
    total_time: float
    text_tokens: int
    codec_codes: int
    audio_seconds: float
    engine: str = ""
    #: Seconds the request waited for the model before it started (included in the times above).
    queue_time: float = 0.0
    #: Per-stage measurements an engine may add (e.g. tokens per second).
    extra: dict[str, float] = field(default_factory=dict)
    #: Which copy of the model generated the reply, where a deployment runs several
    #: (a Ray Serve replica: its id and host); empty for a single model.
    served_by: str = ""
    #: The most replies the model made together in one step with this one, itself included
    #: (1: made alone; 0: not known, e.g. a server that does not say).
    batch_peak: int = 0

    @property
    def real_time_factor(self) -> float | None:
        """Generation time per second of speech (< 1 means faster than real time)."""
        if self.audio_seconds <= 0:
            return None
        return self.total_time / self.audio_seconds


@dataclass(frozen=True)
class Done:
    """The last event of every stream."""

    reason: DoneReason
    stats: Stats
    #: What the model produced; ``None`` where the backend can't say (a remote model).
    trace: Trace | None = None


Event = Union[TextDelta, AudioChunk, Notice, Done]


class StreamClock:
    """Times a stream where the caller sees it, so every backend reports the same times.

    A backend whose model is elsewhere (a server, a Ray replica, a GPU worker) feeds each
    event through :meth:`seen` from the moment its ``stream`` was called. Its ``Done`` then
    carries the times measured here, the model side's own ones kept in ``extra`` under
    ``prefix``; a stream cut short here (cancelled) gets a ``Done`` built from what was seen.
    """

    def __init__(self, prefix: str, engine: str = "") -> None:
        self.started = time.perf_counter()
        self.prefix = prefix
        self.engine = engine
        self.first_text: float | None = None
        self.first_audio: float | None = None
        self.texts = 0
        self.audio_seconds = 0.0
        #: The other side's ``Done`` came through.
        self.done = False

    def seen(self, event: Event) -> Event:
        """Note ``event`` (returned as it is, or as the restamped ``Done``)."""
        now = time.perf_counter() - self.started
        if isinstance(event, TextDelta):
            self.first_text = now if self.first_text is None else self.first_text
            self.texts += 1
        elif isinstance(event, AudioChunk):
            self.first_audio = now if self.first_audio is None else self.first_audio
            self.audio_seconds += event.seconds
        elif isinstance(event, Done):
            self.done = True
            return replace(event, stats=self.restamp(event.stats))
        return event

    def restamp(self, stats: Stats) -> Stats:
        """``stats`` with the times seen here; the other side's in ``extra``."""
        theirs = {f"{self.prefix}_{name}": value for name, value in (
            ("time_to_first_text", stats.time_to_first_text), ("time_to_first_audio", stats.time_to_first_audio),
            ("total_time", stats.total_time)) if value is not None}
        return replace(stats, time_to_first_text=self.first_text, time_to_first_audio=self.first_audio,
                       total_time=time.perf_counter() - self.started, extra={**stats.extra, **theirs})

    def cut_short(self) -> Done:
        """The ``Done`` of a stream cancelled before the other side's ``Done`` arrived: the times and
        the speech seen so far; the counts are those of the pieces seen (``extra['counted_here']``)."""
        return Done("cancelled", Stats(
            self.first_text, self.first_audio, time.perf_counter() - self.started, text_tokens=self.texts,
            codec_codes=round(self.audio_seconds * CODES_PER_SECOND), audio_seconds=self.audio_seconds,
            engine=self.engine, extra={"counted_here": 1.0}))
