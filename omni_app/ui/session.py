"""Per-browser-session state, kept per tab and keyed by gradio's session hash."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..conversation import Conversation


@dataclass
class ChatSession:
    """One browser session of one tab: its history, its running reply, its microphone."""

    conversation: Conversation = field(default_factory=Conversation)
    #: What the chat view shows (gradio "messages" format).
    messages: list[dict] = field(default_factory=list)
    #: Set to stop the reply that is being generated.
    cancel: threading.Event | None = None
    generating: bool = False
    detector: object | None = None  # omni_app.vad.TurnDetector, created on first audio
    #: Utterances that ended while waiting to be answered (oldest first).
    turns: deque = field(default_factory=deque)
    #: Webcam frames (monotonic time, RGB array) of the last minute, for video turns.
    frames: deque = field(default_factory=lambda: deque(maxlen=240))
    turn_ended_at: float | None = None
    turn_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        """Stop the reply being generated, if any."""
        if self.cancel is not None:
            self.cancel.set()

    def clear(self) -> None:
        """Forget the conversation (the microphone state is reset too)."""
        self.stop()
        self.conversation = Conversation()
        self.messages = []
        self.turns.clear()
        if self.detector is not None:
            self.detector.reset()

    def add_frame(self, frame: np.ndarray) -> None:
        self.frames.append((time.monotonic(), frame))


class SessionStore:
    """Sessions of one tab. Entries are dropped when the browser tab unloads."""

    def __init__(self) -> None:
        self._sessions: dict[str, ChatSession] = {}
        self._lock = threading.Lock()

    def get(self, request) -> ChatSession:
        key = getattr(request, "session_hash", None) or "default"
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = ChatSession()
            return self._sessions[key]

    def drop(self, request) -> None:
        key = getattr(request, "session_hash", None) or "default"
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            session.stop()

    def __len__(self) -> int:
        return len(self._sessions)
