"""The model service: one loaded model, one generation at a time, a typed event stream.

``ModelService.stream(request, cancel)`` is a plain generator. The blocking model call
runs in a worker thread (the only thread in the stream); events cross over on a queue,
and an exception in the worker is re-raised in the consumer, so the caller sees it.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ..config import GenerationLimits, ServiceConfig
from ..conversation import Conversation, PreparedInputs, build_inputs
from ..errors import RequestError
from ..events import AudioChunk, Done, Event, Notice, Stats, TextDelta
from ..voices import Voice
from .loader import OUTPUT_SAMPLE_RATE, LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One reply to generate."""

    conversation: Conversation
    #: A voice name, a :class:`~omni_app.voices.Voice` (e.g. a session's custom voice),
    #: or ``None`` for a text-only reply.
    voice: "str | Voice | None" = "Chelsie"
    limits: GenerationLimits = GenerationLimits()
    #: Fixes the sampling of the speech; ``None`` picks a random seed (reported in stats).
    seed: int | None = None
    #: Sample speech codes as the model card recommends (top-k 40, top-p 0.8, T 0.9);
    #: ``False`` decodes them greedily (repeatable without a seed; used for comparisons).
    speech_sampling: bool = True
    #: Exact-text speech: speak these words (the conversation is not used). Streaming engine.
    speak_text: str | None = None
    #: Filled in by the engine for the caller that wants to look inside (ids, codes).
    trace: "Trace | None" = field(default=None, compare=False)


@dataclass
class Trace:
    """What the model produced for one request, for inspection and tests."""

    prompt_ids: list[int] = field(default_factory=list)
    reply_ids: list[int] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    #: Streaming engine only: the code2wav chunk plans, in mel frames.
    chunks: list = field(default_factory=list)
    #: Streaming engine only: (seconds since start, "token" | "code" | "chunk", running count).
    timeline: list[tuple[float, str, int]] = field(default_factory=list)


class Cancel:
    """Set when either the caller's event or the stream's own closing asks to stop."""

    def __init__(self, *events: threading.Event | None) -> None:
        self._events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self._events)


@dataclass
class EngineResult:
    """What an engine reports when it has finished a request."""

    reason: str
    text_tokens: int
    codec_codes: int
    extra: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    """Runs one prepared request, calling ``emit`` with each event as it is produced."""

    name: str

    def run(self, loaded: LoadedModel, prepared: PreparedInputs, request: Request,
            emit: Callable[[Event], None], cancel: Cancel) -> EngineResult: ...


_END = object()
#: Longest exact-text request (roughly 5 minutes of speech).
MAX_SPEAK_CHARS = 5000


class ModelService:
    """A loaded model behind ``stream()``; generations are serialised by a lock."""

    def __init__(self, loaded: LoadedModel, engine: Engine) -> None:
        self.loaded = loaded
        self.engine = engine
        self._lock = threading.Lock()
        self._voices = {name: Voice.from_speaker(name, entry) for name, entry in loaded.voices.items()}
        self._stock = list(loaded.voice_names)

    def add_voices(self, voices: list[Voice]) -> None:
        """Make saved custom voices selectable by name (stock voices keep their names)."""
        for voice in voices:
            if voice.name in self._stock:
                raise RequestError(f"A custom voice can't take the name of the stock voice {voice.name!r}.")
            self._voices[voice.name] = voice

    def voice(self, name: str) -> Voice:
        """The voice called ``name``."""
        if name not in self._voices:
            raise RequestError(f"Unknown voice {name!r}; choose one of {', '.join(self.voices)}.")
        return self._voices[name]

    @classmethod
    def from_config(cls, config: ServiceConfig) -> "ModelService":
        """Load the model named in ``config`` and build the selected engine."""
        from .loader import load_model

        loaded = load_model(config.model, device=config.device, dtype=config.dtype)
        return cls(loaded, make_engine(config))

    @property
    def voices(self) -> list[str]:
        """Voice names: the stock ones first, then saved custom voices."""
        return self._stock + sorted(n for n in self._voices if n not in self._stock)

    @property
    def stock_voices(self) -> list[str]:
        return list(self._stock)

    def warmup(self) -> None:
        """Run one short request so the first user does not pay for lazy initialisation."""
        conversation = Conversation().add_user("Hello")
        limits = GenerationLimits(max_new_tokens=4, max_speech_seconds=0.5)
        for _ in self.stream(Request(conversation, voice=self._stock[0], limits=limits, seed=0)):
            pass

    def stream(self, request: Request, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Generate the reply to ``request`` as events; the last one is always :class:`Done`."""
        started = time.perf_counter()
        voice = self.voice(request.voice) if isinstance(request.voice, str) else request.voice
        if request.seed is None:
            request = replace(request, seed=random.randrange(2**31))
        request = replace(request, voice=voice)
        if request.speak_text is not None:
            if voice is None:
                raise RequestError("Speaking a text needs a voice.")
            if not request.speak_text.strip():
                raise RequestError("There is no text to speak: type some first.")
            if len(request.speak_text) > MAX_SPEAK_CHARS:
                raise RequestError(f"The text is {len(request.speak_text)} characters long; the limit is "
                                   f"{MAX_SPEAK_CHARS}. Split it into parts.")
            if not getattr(self.engine, "speaks_text", False):
                raise RequestError("Exact-text speech needs the streaming engine (--engine streaming).")
            prepared = None
        else:
            if voice is not None:
                warning = request.conversation.speech_prompt_warning()
                if warning:
                    yield Notice(warning)
            prepared = build_inputs(request.conversation, self.loaded.processor)

        closed = threading.Event()
        stop = Cancel(cancel, closed)
        if not self._acquire(stop):
            yield Done("cancelled", _stats(started, None, None, 0, 0, 0.0, self.engine.name, request))
            return
        try:
            yield from self._run(request, prepared, stop, closed, started)
        finally:
            self._lock.release()

    def _acquire(self, stop: Cancel) -> bool:
        while not self._lock.acquire(timeout=0.05):
            if stop.is_set():
                return False
        return True

    def _run(self, request, prepared, stop, closed, started) -> Iterator[Event]:
        events: queue.Queue = queue.Queue()
        outcome: dict = {}

        def work() -> None:
            try:
                outcome["result"] = self.engine.run(self.loaded, prepared, request, events.put, stop)
            except BaseException as exc:  # re-raised in the consumer below
                outcome["error"] = exc
            finally:
                events.put(_END)

        worker = threading.Thread(target=work, name="omni-generate", daemon=True)
        worker.start()
        first_text = first_audio = None
        audio_samples = 0
        cancelled = False
        try:
            while True:
                try:
                    event = events.get(timeout=0.5)
                except queue.Empty:
                    if not worker.is_alive() and events.empty():
                        raise RuntimeError("the generation worker stopped without a result") from None
                    continue
                if event is _END:
                    cancelled = stop.is_set()
                    break
                now = time.perf_counter() - started
                if isinstance(event, TextDelta) and first_text is None:
                    first_text = now
                if isinstance(event, AudioChunk):
                    first_audio = now if first_audio is None else first_audio
                    audio_samples += len(event.samples)
                yield event
        finally:
            # Reached on normal end, on an error, and when the consumer closes the stream.
            closed.set()
            worker.join()
        if "error" in outcome:
            raise outcome["error"]
        result: EngineResult = outcome["result"]
        reason = "cancelled" if cancelled else result.reason
        yield Done(reason, _stats(started, first_text, first_audio, result.text_tokens, result.codec_codes,
                                  audio_samples / OUTPUT_SAMPLE_RATE, self.engine.name, request, result.extra))


def make_engine(config: ServiceConfig) -> Engine:
    """The engine named in ``config``."""
    if config.engine == "reference":
        from .reference import ReferenceEngine

        return ReferenceEngine()
    from .streaming import StreamingEngine

    return StreamingEngine(config.chunk_blocks)


def _stats(started, first_text, first_audio, tokens, codes, audio_seconds, engine, request, extra=None) -> Stats:
    merged = dict(extra or {})
    merged["seed"] = float(request.seed) if request.seed is not None else -1.0
    return Stats(
        time_to_first_text=first_text, time_to_first_audio=first_audio,
        total_time=time.perf_counter() - started, text_tokens=tokens, codec_codes=codes,
        audio_seconds=audio_seconds, engine=engine, extra=merged,
    )


def to_int16(wave: np.ndarray) -> np.ndarray:
    """Float waveform in [-1, 1] to int16 PCM (clipped, rounded)."""
    return np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)
