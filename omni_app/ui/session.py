"""Per-browser-session state, kept per tab and keyed by gradio's session hash."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from ..api import CancelToken
from ..conversation import Conversation


@dataclass
class ChatSession:
    """One browser session of one tab: its history, its running reply, its microphone."""

    #: Which tab and browser session this is (a backend may keep state under it).
    key: str = ""
    conversation: Conversation = field(default_factory=Conversation)
    #: What the chat view shows (gradio "messages" format).
    messages: list[dict] = field(default_factory=list)
    #: Set to stop the reply that is being generated.
    cancel: CancelToken | None = None
    detector: object | None = None  # omni_app.vad.TurnDetector, created on first audio
    #: Utterances waiting to be answered (oldest first): (16 kHz audio, monotonic end time).
    turns: deque = field(default_factory=deque)
    #: Webcam frames (monotonic time, RGB array) of about the last minute (2 per second).
    frames: deque = field(default_factory=lambda: deque(maxlen=120))
    turn_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel_reply(self) -> None:
        """Stop the reply being generated, if any."""
        cancel = self.cancel  # read once: the reply may clear it at any moment
        if cancel is not None:
            cancel.cancel()

    def stop(self) -> None:
        """The user's Stop: end the reply and drop spoken turns still waiting for one."""
        self.cancel_reply()
        self.turns.clear()

    def clear(self) -> None:
        """Forget the conversation (the microphone state is reset too)."""
        self.stop()
        # Detach the running reply: it must not write into the cleared history.
        self.cancel = None
        self.conversation = Conversation()
        self.messages = []
        with self.lock:
            if self.detector is not None:
                self.detector.reset()

    def add_frame(self, frame: np.ndarray) -> None:
        self.frames.append((time.monotonic(), frame))


def session_key(request) -> str:
    """The browser session a gradio request belongs to."""
    return getattr(request, "session_hash", None) or "default"


class SessionStore:
    """Sessions of one tab. Entries are dropped when the browser tab unloads.

    API clients never unload, so the least recently used sessions beyond ``limit`` are
    dropped too.
    """

    def __init__(self, name: str, limit: int = 500) -> None:
        #: The tab's name: sessions of different tabs are different conversations.
        self.name = name
        self._sessions: OrderedDict[str, ChatSession] = OrderedDict()
        self._lock = threading.Lock()
        self.limit = limit

    def get(self, request) -> ChatSession:
        key = session_key(request)
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = ChatSession(key=f"{self.name}:{key}")
                while len(self._sessions) > self.limit:
                    _, oldest = self._sessions.popitem(last=False)
                    oldest.cancel_reply()
            self._sessions.move_to_end(key)
            return self._sessions[key]

    def drop(self, request) -> list[str]:
        """Forget a browser session; returns the keys of what was dropped."""
        key = session_key(request)
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is None:
            return []
        session.stop()
        return [session.key]

    def __len__(self) -> int:
        return len(self._sessions)
