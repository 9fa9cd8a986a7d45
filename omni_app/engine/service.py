"""The model service: one loaded model, many replies made together, a typed event stream each.

``ModelService.stream(request, cancel)`` is a plain generator. It prepares the prompt in
the caller's thread, then hands the request to the :class:`~.scheduler.Scheduler`, whose
one thread owns the model and advances up to ``max_batch`` replies together; the events
come back through the request's own bounded channel, and an exception in the model's
work for it is re-raised here, so the caller sees it.
"""

from __future__ import annotations

import logging
import os
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
from .common import Engine, EngineResult, Job
from .loader import OUTPUT_SAMPLE_RATE, LoadedModel
from .memory import fit_batch
from .scheduler import Failed, Finished, Scheduler
from .sessions import CacheSlot, SessionState, SessionStates

log = logging.getLogger(__name__)

#: Longest exact-text request (roughly 5 minutes of speech).
MAX_SPEAK_CHARS = 5000


#: Unlisted custom voices (made in a browser session or through the API) kept at most.
MAX_CUSTOM_VOICES = 256


class ModelService:
    """A loaded model behind ``stream()``; up to ``max_batch`` replies are made at once, the rest wait their turn."""

    def __init__(self, loaded: LoadedModel, engine: Engine, session_cache_mb: int = ServiceConfig.session_cache_mb,
                 context_tokens: int | None = None, max_batch: int = ServiceConfig.max_batch,
                 stall_seconds: float = ServiceConfig.stall_seconds, channel_size: int | None = None) -> None:
        self.loaded = loaded
        self.engine = engine
        #: Per conversation: prompt memo and model caches (see :mod:`.sessions`).
        self.sessions = SessionStates(session_cache_mb * 2**20)
        self.reuse_cache = engine.reuses_cache and session_cache_mb > 0
        #: Tokens a prompt and its reply may take together.
        self.context_tokens = context_tokens or loaded.model.thinker.config.get_text_config().max_position_embeddings
        #: Replies made at once (an engine that does not batch makes one at a time).
        self.max_batch = max_batch
        self.stall_seconds = stall_seconds
        #: Events that may wait for a slow reader before its reply is paused.
        self.channel_size = channel_size or EVENT_QUEUE_SIZE
        self._scheduler: Scheduler | None = None
        self._scheduler_lock = threading.Lock()
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
        return cls(loaded, make_engine(config), config.session_cache_mb, config.context_tokens,
                   fit_batch(loaded, config.max_batch), config.stall_seconds)

    @property
    def voices(self) -> list[str]:
        """Voice names: the stock ones first, then saved custom voices."""
        return self._stock + sorted(n for n in self._voices if n not in self._stock)

    @property
    def stock_voices(self) -> list[str]:
        return list(self._stock)

    @property
    def scheduler(self) -> Scheduler:
        """The loop that owns the model (made on first use, so a service that is never asked costs nothing)."""
        with self._scheduler_lock:
            if self._scheduler is None or self._scheduler.pid != os.getpid():  # a forked worker starts afresh
                self._scheduler = Scheduler(self.engine, self.loaded, self.max_batch, self.stall_seconds,
                                            self.channel_size)
            return self._scheduler

    @property
    def batch_limit(self) -> int:
        """Replies made at once: ``max_batch`` with an engine that batches, else 1."""
        return self.max_batch if self.engine.batches else 1

    @property
    def waiting(self) -> int:
        """Requests waiting for a place in the batch right now."""
        return self._scheduler.waiting if self._scheduler is not None else 0

    @property
    def busy(self) -> bool:
        """Whether the model is making a reply right now."""
        return self._scheduler is not None and self._scheduler.active > 0

    @property
    def active(self) -> int:
        """Replies being made right now."""
        return self._scheduler.active if self._scheduler is not None else 0

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model: no step runs meanwhile (for other work on its modules)."""
        with self.scheduler.model_lock:
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

        yield from self._generate(job, prepared, cancel, started)

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

    def _generate(self, job: Job, prepared, cancel: CancelToken | None, started: float) -> Iterator[Event]:
        """Hand the job to the scheduler and pass on its events; the last one is :class:`Done`."""
        scheduler = self.scheduler
        ticket = scheduler.submit(job, prepared, cancel)
        first_text = first_audio = None
        audio_samples = 0
        try:
            while True:
                item = ticket.channel.get(QUEUE_POLL_SECONDS)
                if item is None:
                    if ticket.admitted is None and ticket.stop.is_set() and scheduler.withdraw(ticket):
                        queued = time.perf_counter() - started
                        yield Done("cancelled", _stats(started, None, None, EngineResult("cancelled", 0, 0), 0.0,
                                                       self.engine.name, job, queued))
                        return
                    continue
                if isinstance(item, Failed):
                    raise item.error
                if isinstance(item, Finished):
                    result = item.result
                    cancelled = ticket.stop.is_set() or result.reason == "cancelled"
                    queued = (ticket.admitted or time.perf_counter()) - started
                    yield Done("cancelled" if cancelled else result.reason,
                               _stats(started, first_text, first_audio, result, audio_samples / OUTPUT_SAMPLE_RATE,
                                      self.engine.name, job, queued), result.trace)
                    return
                now = time.perf_counter() - started
                if isinstance(item, TextDelta) and first_text is None:
                    first_text = now
                if isinstance(item, AudioChunk):
                    first_audio = now if first_audio is None else first_audio
                    audio_samples += len(item.samples)
                yield item
        finally:
            # Reached on the end, on an error, and when the consumer closes the stream: a reply
            # still in the batch leaves it within one step, a waiting one leaves the queue.
            if not ticket.released.is_set():
                scheduler.release(ticket)


#: How often a waiting request checks for a cancel.
QUEUE_POLL_SECONDS = 0.1
#: Events waiting between the model and a slow consumer (a few seconds of speech).
EVENT_QUEUE_SIZE = 256


def make_engine(config: ServiceConfig) -> Engine:
    """The engine named in ``config``."""
    if config.engine == "reference":
        from .reference import ReferenceEngine

        return ReferenceEngine()
    from .streaming import StreamingEngine

    return StreamingEngine(config.chunk_blocks, config.prefill_chunk, config.compile)


def _stats(started, first_text, first_audio, result: EngineResult, audio_seconds: float, engine: str,
           job: Job, queued: float) -> Stats:
    extra = dict(result.extra)
    extra["seed"] = float(job.seed)
    return Stats(
        time_to_first_text=first_text, time_to_first_audio=first_audio,
        total_time=time.perf_counter() - started, text_tokens=result.text_tokens, codec_codes=result.codec_codes,
        audio_seconds=audio_seconds, engine=engine, queue_time=queued, extra=extra, batch_peak=result.batch_peak,
    )
