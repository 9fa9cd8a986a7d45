"""The reply loop shared by every tab: model events in, chat view / audio / status out.

A failed turn is taken back out of the shown history here, so the session goes on as it
was; the error itself reaches the browser through :func:`omni_app.ui.errors.shown`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import gradio as gr

from ..api import CancelToken, Request
from ..conversation import Part
from ..errors import OmniError
from ..events import AudioChunk, Done, Notice, Stats, TextDelta
from .context import AppContext, LastReply
from .session import ChatSession

log = logging.getLogger(__name__)


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


def run_reply(app: AppContext, session: ChatSession, parts: list[Part], shown: str,
              voice: str | None, request=None) -> Iterator[tuple]:
    """Answer one user turn. Yields ``(messages, audio, status)``; ``gr.skip()`` where unchanged."""
    conversation = session.conversation.add_user(*parts)
    session.cancel_reply()  # a newer turn replaces a reply still running (barge-in)
    cancel = CancelToken()
    session.cancel = cancel

    def current() -> bool:
        # False once Clear (or a newer turn) took the session over: stop writing into it.
        return session.cancel is cancel

    before = list(session.messages)
    session.messages = before + [{"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
    yield list(session.messages), gr.skip(), "Thinking…"
    text = ""
    heard = False
    log.info("reply started at %.3f", time.time())
    try:
        for event in app.backend.stream(Request(conversation, voice=voice, limits=app.limits,
                                                session=session.key), cancel):
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
            elif isinstance(event, Notice) and event.queue_position is not None:
                yield gr.skip(), gr.skip(), f"⏳ {event.message}"
            elif isinstance(event, Notice):
                gr.Warning(event.message)
            elif isinstance(event, Done):
                if not text:
                    session.messages[-1] = {"role": "assistant", "content": "…"}
                session.conversation = conversation.add_assistant(text)
                app.remember(request, LastReply(conversation, event))
                yield list(session.messages), gr.skip(), format_status(event)
    except Exception as exc:
        if current():
            session.messages = before
        yield before, gr.skip(), f"⚠️ {exc}" if isinstance(exc, OmniError) else "⚠️ The reply failed."
        raise
    finally:
        if current():
            session.cancel = None
