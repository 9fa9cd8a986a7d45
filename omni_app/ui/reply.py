"""The reply loop shared by every tab: model events in, chat view / audio / status out.

Errors are turned into ``gr.Error`` here, in one place, after the failed turn has been
taken back out of the shown history, so the session goes on as it was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr

from ..config import GenerationLimits
from ..conversation import Conversation, Part
from ..engine.service import Request, Trace
from ..errors import OmniError, RequestError
from ..events import AudioChunk, Done, Notice, Stats, TextDelta
from ..voices import Voice
from .session import ChatSession, session_key
from .zerogpu import on_gpu

log = logging.getLogger(__name__)


class Backend:
    """What the UI needs from the model service (the UI never touches the model itself)."""

    def __init__(self, service, limits: GenerationLimits, media, voices_dir=None) -> None:
        self.service = service
        self.limits = limits
        self.media = media
        #: Where custom voices are saved (None: they live only as long as the browser session).
        self.voices_dir = voices_dir
        self._session_voices: dict[str, dict[str, Voice]] = {}
        #: The last reply of each browser session (any tab), for the "inside the model" tab.
        self.last: dict[str, LastReply] = {}
        generate = self._generate_on_gpu
        self._generate = on_gpu(generate)
        #: Off ZeroGPU the wrapper is the function itself and runs in this process.
        self._in_process = self._generate is generate

    @property
    def voices(self) -> list[str]:
        return self.service.voices

    def voices_for(self, request) -> list[str]:
        """Voice names this browser session can pick: stock, saved, then its own."""
        own = self._session_voices.get(session_key(request), {})
        return self.service.voices + [n for n in own if n not in self.service.voices]

    def add_session_voice(self, voice: Voice, request) -> None:
        if voice.name in self.service.stock_voices:
            raise RequestError(f"{voice.name!r} is a stock voice; choose another name.")
        self._session_voices.setdefault(session_key(request), {})[voice.name] = voice

    def remember(self, request, reply: "LastReply") -> None:
        """Keep a session's last reply (a bounded number of sessions: API calls never unload)."""
        self.last.pop(session_key(request), None)
        self.last[session_key(request)] = reply
        while len(self.last) > 500:
            self.last.pop(next(iter(self.last)))

    def drop_session(self, request) -> None:
        self._session_voices.pop(session_key(request), None)
        self.last.pop(session_key(request), None)

    def resolve_voice(self, name: str | None, request) -> str | Voice | None:
        """A session's own voice as a :class:`Voice`; other names pass through."""
        if name is None:
            return None
        return self._session_voices.get(session_key(request), {}).get(name, name)

    @property
    def is_tiny(self) -> bool:
        return self.service.loaded.is_tiny

    @property
    def description(self) -> str:
        loaded = self.service.loaded
        return f"{loaded.name} on {loaded.device} ({str(loaded.dtype).replace('torch.', '')}), " \
               f"{self.service.engine.name} engine"

    def stream(self, conversation: Conversation, voice: str | None, cancel: threading.Event, trace=None):
        """The reply's events; the only call that needs the GPU."""
        return self._events(conversation, voice, None, cancel, trace)

    def speak(self, text: str, voice, cancel: threading.Event):
        """Exact-text speech events (the text is read as written)."""
        return self._events(None, voice, text, cancel, None)

    def _events(self, conversation, voice, speak_text, cancel, trace):
        if self._in_process:  # share the cancel event and the trace directly
            yield from self._generate_on_gpu(conversation, voice, speak_text, cancel, trace)
            return
        # ZeroGPU runs the generator in another process and pickles its arguments: a
        # threading.Event can't cross, so Stop closes the generator, and the trace comes back
        # as the last item.
        events = self._generate(conversation, voice, speak_text, None, None)
        try:
            for item in events:
                if isinstance(item, Trace):
                    if trace is not None:
                        trace.__dict__.update(item.__dict__)
                    continue
                yield item
                if cancel.is_set():
                    break
        finally:
            events.close()

    def _generate_on_gpu(self, conversation, voice, speak_text, cancel, trace):
        own_trace = trace if trace is not None else Trace()
        request = Request(conversation or Conversation(), voice=voice, limits=self.limits, speak_text=speak_text,
                          trace=own_trace)
        yield from self.service.stream(request, cancel)
        if trace is None:
            yield own_trace


@dataclass
class LastReply:
    """A finished reply with what the engine recorded about it."""

    conversation: Conversation
    trace: Trace
    done: Done


def format_status(done: Done) -> str:
    """One line per reply: time to first text and audio, real-time factor."""
    s: Stats = done.stats
    parts = []
    if done.reason == "cancelled":
        parts.append("stopped")
    elif done.reason == "length":
        parts.append("cut at the length limit")
    if s.time_to_first_text is not None:
        parts.append(f"first text {s.time_to_first_text:.2f} s")
    if s.time_to_first_audio is not None:
        parts.append(f"first audio {s.time_to_first_audio:.2f} s")
    if s.audio_seconds:
        parts.append(f"{s.audio_seconds:.1f} s of speech, real-time factor {s.real_time_factor:.2f}")
    parts.append(f"{s.text_tokens} tokens in {s.total_time:.2f} s")
    return " · ".join(parts)


def run_reply(backend: Backend, session: ChatSession, parts: list[Part], shown: str,
              voice: str | None, request=None) -> Iterator[tuple]:
    """Answer one user turn. Yields ``(messages, audio, status)``; ``gr.skip()`` where unchanged."""
    try:
        conversation = session.conversation.add_user(*parts)
    except OmniError as exc:
        raise gr.Error(str(exc)) from exc
    session.cancel_reply()  # a newer turn replaces a reply still running (barge-in)
    cancel = threading.Event()
    session.cancel = cancel

    def current() -> bool:
        # False once Clear (or a newer turn) took the session over: stop writing into it.
        return session.cancel is cancel

    before = list(session.messages)
    session.messages = before + [{"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
    yield list(session.messages), gr.skip(), "Thinking…"
    text = ""
    trace = Trace()
    heard = False
    log.info("reply started at %.3f", time.time())
    try:
        for event in backend.stream(conversation, voice, cancel, trace):
            if not current():
                return
            if isinstance(event, TextDelta):
                text += event.text
                session.messages[-1] = {"role": "assistant", "content": text}
                yield list(session.messages), gr.skip(), gr.skip()
            elif isinstance(event, AudioChunk):
                if not heard:
                    heard = True
                    log.info("first audio chunk sent at %.3f", time.time())
                yield gr.skip(), (event.sample_rate, event.samples), gr.skip()
            elif isinstance(event, Notice):
                gr.Warning(event.message)
            elif isinstance(event, Done):
                if not text:
                    session.messages[-1] = {"role": "assistant", "content": "…"}
                session.conversation = conversation.add_assistant(text)
                backend.remember(request, LastReply(conversation, trace, event))
                yield list(session.messages), gr.skip(), format_status(event)
    except OmniError as exc:
        if current():
            session.messages = before
        yield before, gr.skip(), f"⚠️ {exc}"
        raise gr.Error(str(exc)) from exc
    except gr.Error:
        raise
    except Exception as exc:
        log.exception("reply failed")
        if current():
            session.messages = before
        yield before, gr.skip(), "⚠️ The reply failed."
        raise gr.Error(f"The reply failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if current():
            session.cancel = None
