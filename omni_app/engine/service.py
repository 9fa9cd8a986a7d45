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
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from ..api import CancelToken, Request
from ..config import GenerationLimits, ServiceConfig
from ..conversation import Conversation
from ..errors import RequestError
from ..events import AudioChunk, Done, Event, Notice, Stats, TextDelta
from ..media_items import PromptMemo
from ..prompt import PreparedInputs, build_inputs
from ..voices import Voice
from .budget import Dropped, fit_context
from .common import Cancel, Engine, EngineResult, Job
from .fifo import FifoLock
from .loader import OUTPUT_SAMPLE_RATE, LoadedModel
from .sessions import CacheSlot, SessionState, SessionStates

log = logging.getLogger(__name__)

_END = object()
#: Longest exact-text request (roughly 5 minutes of speech).
MAX_SPEAK_CHARS = 5000


#: Unlisted custom voices (made in a browser session or through the API) kept at most.
MAX_CUSTOM_VOICES = 256


class ModelService:
    """A loaded model behind ``stream()``; generations are serialised by a lock."""

    def __init__(self, loaded: LoadedModel, engine: Engine, session_cache_mb: int = ServiceConfig.session_cache_mb,
                 context_tokens: int | None = None) -> None:
        self.loaded = loaded
        self.engine = engine
        #: Per conversation: prompt memo and model caches (see :mod:`.sessions`).
        self.sessions = SessionStates(session_cache_mb * 2**20)
        self.reuse_cache = getattr(engine, "reuses_cache", False) and session_cache_mb > 0
        #: Tokens a prompt and its reply may take together.
        self.context_tokens = context_tokens or loaded.model.thinker.config.get_text_config().max_position_embeddings
        #: One generation at a time, first come first served.
        self._lock = FifoLock()
        #: Voices listed by name: the stock ones and saved custom ones.
        self._voices = {name: Voice.from_speaker(name, entry) for name, entry in loaded.voices.items()}
        self._stock = list(loaded.voice_names)
        #: Unlisted custom voices by id, least recently used first.
        self._custom: OrderedDict[str, Voice] = OrderedDict()
        self._voices_lock = threading.Lock()

    def add_voices(self, voices: list[Voice]) -> None:
        """Make saved custom voices selectable by name (stock voices keep their names)."""
        for voice in voices:
            if voice.name in self._stock:
                raise RequestError(f"A custom voice can't take the name of the stock voice {voice.name!r}.")
            with self._voices_lock:
                self._voices[voice.name] = voice

    def add_custom_voice(self, voice: Voice) -> str:
        """Keep an unlisted voice (the oldest go beyond a bound); returns the id that names it."""
        key = f"{voice.name}#{voice.fingerprint()}"
        with self._voices_lock:
            self._custom[key] = voice
            self._custom.move_to_end(key)
            while len(self._custom) > MAX_CUSTOM_VOICES:
                self._custom.popitem(last=False)
        return key

    def voice(self, name: str) -> Voice:
        """The voice called (or with the id) ``name``."""
        with self._voices_lock:
            if name in self._voices:
                return self._voices[name]
            if name in self._custom:
                self._custom.move_to_end(name)
                return self._custom[name]
        if "#" in name:
            raise RequestError(f"The voice {name.split('#')[0]!r} is no longer available (the server restarted "
                               "or many newer voices were made); create it again.")
        raise RequestError(f"Unknown voice {name!r}; choose one of {', '.join(self.voices)}.")

    @classmethod
    def from_config(cls, config: ServiceConfig) -> "ModelService":
        """Load the model named in ``config`` and build the selected engine."""
        from .loader import load_model

        loaded = load_model(config.model, device=config.device, dtype=config.dtype)
        return cls(loaded, make_engine(config), config.session_cache_mb, config.context_tokens)

    @property
    def voices(self) -> list[str]:
        """Voice names: the stock ones first, then saved custom voices."""
        return self._stock + sorted(n for n in self._voices if n not in self._stock)

    @property
    def stock_voices(self) -> list[str]:
        return list(self._stock)

    @property
    def waiting(self) -> int:
        """Requests waiting for the model right now."""
        return self._lock.waiting

    @property
    def busy(self) -> bool:
        """Whether a generation (or other work on the model) holds it right now."""
        return self._lock.locked()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model: no generation runs meanwhile (for other work on its modules)."""
        with self._lock:
            yield

    def warmup(self) -> None:
        """Run one short request so the first user does not pay for lazy initialisation."""
        conversation = Conversation().add_user("Hello")
        limits = GenerationLimits(max_new_tokens=4, max_speech_seconds=0.5)
        for _ in self.stream(Request(conversation, voice=self._stock[0], limits=limits, seed=0)):
            pass

    def stream(self, request: Request, cancel: CancelToken | None = None,
               voice: Voice | None = None) -> Iterator[Event]:
        """Generate the reply to ``request`` as events; the last one is always :class:`Done`.

        ``voice`` overrides the lookup of ``request.voice`` (a caller in another process
        passes the voice itself).
        """
        started = time.perf_counter()
        if voice is None and request.voice is not None:
            voice = self.voice(request.voice)
        job = Job(request, voice, request.seed if request.seed is not None else random.randrange(2**31))
        if request.speak_text is not None:
            if voice is None:
                raise RequestError("Speaking a text needs a voice.")
            if not request.speak_text.strip():
                raise RequestError("There is no text to speak: type some first.")
            if len(request.speak_text) > MAX_SPEAK_CHARS:
                raise RequestError(f"The text is {len(request.speak_text)} characters long; the limit is "
                                   f"{MAX_SPEAK_CHARS}. Split it into parts.")
            if not self.engine.speaks_text:
                raise RequestError("Exact-text speech needs the streaming engine (--engine streaming).")
            prepared = None
        else:
            if voice is not None:
                warning = request.conversation.speech_prompt_warning()
                if warning:
                    yield Notice(warning)
            state = self.sessions.state(request.session) if request.session else None
            prepared, notice = self._prepare(request, state)
            if notice:
                yield Notice(notice)
            if state is not None and self.reuse_cache:
                job = replace(job, slot=CacheSlot(self.sessions, request.session, state))

        closed = threading.Event()
        stop = Cancel(cancel, closed)
        if not (yield from self._wait_for_turn(stop)):
            yield Done("cancelled", _stats(started, None, None, EngineResult("cancelled", 0, 0), 0.0,
                                           self.engine.name, job, time.perf_counter() - started))
            return
        queued = time.perf_counter() - started
        # From here the lock belongs to the generation worker: it releases it when the
        # engine returns, so a consumer that goes away never leaves the model locked, and a
        # worker still finishing its step never overlaps the next request.
        yield from self._run(job, prepared, stop, closed, started, queued)

    def end_session(self, session: str) -> None:
        """Forget what is kept for a conversation (its caches are freed)."""
        self.sessions.end(session)

    def _prepare(self, request: Request, state: SessionState | None) -> tuple[PreparedInputs, str | None]:
        """The prompt, fitted to the context; and a notice when this turn left more of it out."""
        memo = state.memo if state is not None else PromptMemo()

        def prepare(conversation: Conversation) -> PreparedInputs:
            return build_inputs(conversation, self.loaded.processor, memo)

        before = state.dropped if state is not None else Dropped()
        fit = fit_context(request.conversation, prepare(request.conversation), self.context_tokens,
                          request.limits.max_new_tokens, prepare, before)
        if state is not None:
            state.dropped = fit.dropped
        changed = fit.dropped != before and (fit.dropped.media or fit.dropped.turns)
        return fit.prepared, fit.notice() if changed else None

    def _wait_for_turn(self, stop: Cancel) -> Iterator[Event]:
        """Wait for the model in arrival order; tell the caller its place while it waits.

        Returns (as the generator's value) whether the lock is now held: ``False`` when
        the request was cancelled, or its stream closed, while it waited.
        """
        ticket = self._lock.join()
        told = None
        try:
            while not self._lock.wait(ticket, QUEUE_POLL_SECONDS):
                if stop.is_set():
                    self._lock.leave(ticket)
                    return False
                ahead = self._lock.ahead(ticket)
                if ahead != told:
                    told = ahead
                    yield Notice(f"Waiting for the model: {ahead} request{'s' if ahead != 1 else ''} ahead.",
                                 level="info", queue_position=ahead)
            return True
        except GeneratorExit:
            self._lock.leave(ticket)
            raise

    def _run(self, job: Job, prepared, stop: Cancel, closed: threading.Event, started: float,
             queued: float) -> Iterator[Event]:
        # Bounded: when the consumer is slow the engine waits; no event is ever dropped.
        events: queue.Queue = queue.Queue(maxsize=EVENT_QUEUE_SIZE)
        outcome: dict = {}

        def put(item) -> None:
            # Wait for room, but give up once the consumer is gone (it sets ``closed``).
            while not closed.is_set():
                try:
                    events.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def work() -> None:
            try:
                outcome["result"] = self.engine.run(self.loaded, prepared, job, put, stop)
            except BaseException as exc:  # re-raised in the consumer below
                outcome["error"] = exc
                if closed.is_set():  # nobody is reading any more: the log is the only place left
                    log.exception("the generation failed after its stream was closed")
            finally:
                self._lock.release()
                put(_END)

        worker = threading.Thread(target=work, name="omni-generate", daemon=True)
        try:
            worker.start()
        except BaseException:
            self._lock.release()
            raise
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
            # Reached on normal end, on an error, and when the consumer closes the stream:
            # the engine sees ``closed`` within one step and the lock is released after it.
            closed.set()
            worker.join(timeout=WORKER_JOIN_SECONDS)
            if worker.is_alive():
                log.warning("the generation worker is still finishing a step after %s s; it frees the model "
                            "when it returns", WORKER_JOIN_SECONDS)
        if "error" in outcome:
            raise outcome["error"]
        result: EngineResult = outcome["result"]
        reason = "cancelled" if cancelled else result.reason
        yield Done(reason, _stats(started, first_text, first_audio, result, audio_samples / OUTPUT_SAMPLE_RATE,
                                  self.engine.name, job, queued), result.trace)


#: How often a waiting request checks for its turn, for a cancel and for its place.
QUEUE_POLL_SECONDS = 0.1
#: Events waiting between the engine and a slow consumer (a few seconds of speech).
EVENT_QUEUE_SIZE = 256
#: How long a closed stream waits for its worker to notice (one engine step, normally).
WORKER_JOIN_SECONDS = 10.0


def make_engine(config: ServiceConfig) -> Engine:
    """The engine named in ``config``."""
    if config.engine == "reference":
        from .reference import ReferenceEngine

        return ReferenceEngine()
    from .streaming import StreamingEngine

    return StreamingEngine(config.chunk_blocks)


def _stats(started, first_text, first_audio, result: EngineResult, audio_seconds: float, engine: str,
           job: Job, queued: float) -> Stats:
    extra = dict(result.extra)
    extra["seed"] = float(job.seed)
    return Stats(
        time_to_first_text=first_text, time_to_first_audio=first_audio,
        total_time=time.perf_counter() - started, text_tokens=result.text_tokens, codec_codes=result.codec_codes,
        audio_seconds=audio_seconds, engine=engine, queue_time=queued, extra=extra,
    )
