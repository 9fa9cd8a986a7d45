"""The reply loop shared by every tab: model events in, chat view / speech / status out.

A failed turn is taken back out of the shown history here, so the session goes on as it
was; the error itself reaches the browser through :func:`omni_app.ui.errors.shown`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr

from ..api import Request
from ..conversation import Part
from ..errors import OmniError
from ..events import AudioChunk, Done, Event, Notice, Stats, TextDelta
from .context import AppContext, LastReply
from .session import ChatSession

log = logging.getLogger(__name__)

#: A browser stamp further off than this is a wrong clock, not a wait.
MAX_BROWSER_WAIT = 3600.0


@dataclass(frozen=True)
class TurnEnd:
    """When the user's turn ended: the status line's times count from here.

    ``at`` is on this server's monotonic clock. ``stamp`` is the browser's own clock
    (epoch seconds) for a turn sent by Enter or a click, echoed back to the page so its
    "heard after" figure never mixes two clocks.
    """

    at: float
    stamp: float | None = None

    @classmethod
    def now(cls) -> TurnEnd:
        return cls(time.monotonic())

    @classmethod
    def from_browser(cls, stamp) -> TurnEnd:
        """The turn the browser stamped when the user pressed Enter or clicked."""
        try:
            stamp = float(stamp)
        except (TypeError, ValueError):
            return cls.now()
        if stamp <= 0:
            return cls.now()
        waited = time.time() - stamp
        if not 0 <= waited <= MAX_BROWSER_WAIT:
            return cls(time.monotonic(), stamp)  # the browser's clock is off: count from now
        return cls(time.monotonic() - waited, stamp)

    def for_page(self) -> dict:
        """What the page needs to place the turn's end on its own clock."""
        if self.stamp:
            return {"at": self.stamp}
        return {"ago": round(time.monotonic() - self.at, 3)}


def format_status(done: Done, waited: float = 0.0) -> str:
    """One line per reply, counted from the end of the user's turn.

    ``waited`` is the time from the end of the turn until the request reached the model
    service (the app's queue); the service's own wait for the model is added to it.
    """
    s: Stats = done.stats
    parts = []
    if done.reason == "cancelled":
        parts.append("stopped")
    elif done.reason == "length":
        parts.append("cut at the length limit")
    wait = max(0.0, waited) + s.queue_time
    parts.append(f"waited {wait:.2f} s for the model" if wait >= 0.01 else "no wait for the model")
    firsts = []
    if s.time_to_first_text is not None:
        firsts.append(f"first text {s.time_to_first_text - s.queue_time:.2f} s")
    if s.time_to_first_audio is not None:
        firsts.append(f"first audio {s.time_to_first_audio - s.queue_time:.2f} s after that "
                      f"({max(0.0, waited) + s.time_to_first_audio:.2f} s after your turn ended)")
    if firsts:
        parts.append(", ".join(firsts))
    if s.audio_seconds:
        parts.append(f"{s.audio_seconds:.1f} s of speech, real-time factor {s.real_time_factor:.2f}")
    parts.append(f"{s.text_tokens} tokens in {s.total_time - s.queue_time:.2f} s")
    if s.batch_peak > 1:
        others = s.batch_peak - 1
        parts.append(f"made alongside up to {others} other repl{'ies' if others > 1 else 'y'}")
    return " · ".join(parts)


def run_reply(app: AppContext, session: ChatSession, parts: list[Part], shown: str,
              voice: str | None, request=None, turn: TurnEnd | None = None) -> Iterator[tuple]:
    """Answer one user turn. Yields ``(messages, speech, status, replay WAV)``.

    Every yield carries all four current values (unchanged ones cost nothing: gradio
    sends differences), so the speech player sees each chunk exactly once.
    """
    turn = turn or TurnEnd.now()
    # A newer turn replaces a reply still running (barge-in); Clear or a newer turn takes the
    # chat over from this one, whose writes are then dropped (ChatSession.write).
    asked = {"role": "user", "content": shown}
    cancel, history, before = session.take_over([asked, {"role": "assistant", "content": ""}])
    conversation = history.add_user(*parts)
    speech = app.speech.new_reply(voice is not None, turn.for_page(), app.limits.max_speech_seconds)
    messages = before + [asked, {"role": "assistant", "content": ""}]

    def current() -> bool:
        return session.owns(cancel)

    def answer(content: str) -> bool:
        messages[-1] = {"role": "assistant", "content": content}
        return session.write(cancel, messages)

    yield list(messages), speech.value, "Thinking…", None
    text = ""
    log.info("reply started at %.3f", time.time())
    try:
        asked_for = Request(conversation, voice=voice, limits=app.limits, session=session.key)
        for event, status in follow(app, asked_for, cancel, speech, turn, "Thinking…"):
            if not current():
                return
            if isinstance(event, TextDelta):
                text += event.text
                if not answer(text):
                    return
            elif isinstance(event, AudioChunk) and len(speech.chunks) == 1:
                log.info("first audio chunk sent at %.3f", time.time())
            elif isinstance(event, Notice) and event.queue_position is None:
                gr.Warning(event.message)
                continue
            elif isinstance(event, Done):
                if not answer(text or "…") or not session.write(cancel, conversation=conversation.add_assistant(text)):
                    return
                app.remember(request, LastReply(conversation, event))
                # A chat's key is "tab:browser session" (see Sessions.chat).
                tab, _, browser = session.key.partition(":")
                yield list(messages), speech.value, status, app.speech.save_wav(browser, tab, speech)
                continue
            yield list(messages), speech.value, status, None
    except Exception as exc:
        session.write(cancel, before)
        yield before, speech.finish(), failed(exc, "reply"), None
        raise
    finally:
        session.release(cancel)


def follow(app: AppContext, request: Request, cancel, speech, turn: TurnEnd, busy: str) -> Iterator[tuple[Event, str]]:
    """The backend's events for ``request``, each with the status line it leaves; ``speech``
    (the page's player) is fed on the way. While the request waits for the model the
    status shows its place; then ``busy``; after ``Done``, the reply's figures."""
    requested = time.monotonic()
    for event in app.backend.stream(request, cancel):
        if isinstance(event, Notice) and event.queue_position is not None:
            yield event, f"⏳ {event.message}"  # still waiting for the model: nothing is made yet
            continue
        speech.start()
        status = busy
        if isinstance(event, AudioChunk):
            speech.add(event)
        elif isinstance(event, Done):
            speech.finish()
            status = format_status(event, requested - turn.at)
        yield event, status


def failed(exc: Exception, what: str) -> str:
    """The status line of a reply that failed (the error itself is shown by ``shown``)."""
    return f"⚠️ {exc}" if isinstance(exc, OmniError) else f"⚠️ The {what} failed."
