"""Per-browser-session state: one object per browser session, one store, one eviction policy.

A :class:`BrowserSession` holds everything the app keeps for a browser session: the chat
of each tab (:class:`ChatSession`), the voices it made and its last reply. :class:`Sessions`
keeps them least recently used first; a session leaves it when its browser tab unloads or
when more than ``limit`` sessions are open (API clients never unload), and whatever the
backend kept for its chats is released then (``Backend.end_session``), as it is on Clear.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..api import CancelToken
from ..conversation import Conversation


@dataclass
class ChatSession:
    """One browser session of one tab: its history, its running reply, its webcam frames."""

    #: Which tab and browser session this is (a backend may keep state under it).
    key: str = ""
    conversation: Conversation = field(default_factory=Conversation)
    #: What the chat view shows (gradio "messages" format).
    messages: list[dict] = field(default_factory=list)
    #: Set to stop the reply that is being generated.
    cancel: CancelToken | None = None
    #: Webcam frames (monotonic time, RGB array at the model's resolution) of about the
    #: last minute (2 per second).
    frames: deque = field(default_factory=lambda: deque(maxlen=120))
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Called with ``key`` when the conversation ends (Clear, or the session goes away).
    on_end: Callable[[str], None] | None = None

    # The chat has two writers, the reply's thread and the person (Clear, Stop, a new turn):
    # every change goes through these methods, under ``lock``. A reply owns the chat through
    # its cancel token; once Clear or a newer reply took it over, its writes are dropped.

    def cancel_reply(self) -> None:
        """Stop the reply being generated, if any."""
        with self.lock:
            cancel = self.cancel
        if cancel is not None:
            cancel.cancel()

    def stop(self) -> None:
        """The user's Stop: end the reply."""
        self.cancel_reply()

    def take_over(self, shown: list[dict]) -> tuple[CancelToken, Conversation, list[dict]]:
        """A new reply owns the chat (one still running is cancelled) and shows ``shown`` after
        the history. Returns its token, and the conversation and messages it starts from."""
        with self.lock:
            if self.cancel is not None:
                self.cancel.cancel()
            self.cancel = CancelToken()
            before = list(self.messages)
            self.messages = before + shown
            return self.cancel, self.conversation, before

    def write(self, owner: CancelToken, messages: list[dict] | None = None,
              conversation: Conversation | None = None) -> bool:
        """The reply ``owner`` changes the chat; False (and nothing changed) if it no longer owns it."""
        with self.lock:
            if self.cancel is not owner:
                return False
            if messages is not None:
                self.messages = list(messages)
            if conversation is not None:
                self.conversation = conversation
            return True

    def owns(self, owner: CancelToken) -> bool:
        with self.lock:
            return self.cancel is owner

    def release(self, owner: CancelToken) -> None:
        """The reply ``owner`` is over."""
        with self.lock:
            if self.cancel is owner:
                self.cancel = None

    def restart(self) -> None:
        """The next turn starts a new conversation for the model (the chat shown stays)."""
        with self.lock:
            self.conversation = Conversation()

    def clear(self) -> None:
        """Forget the conversation: the running reply is stopped and detached (it must not write
        into the cleared history)."""
        with self.lock:
            if self.cancel is not None:
                self.cancel.cancel()
            self.cancel = None
            self.conversation = Conversation()
            self.messages = []
            self.frames.clear()
        self.end()

    def end(self) -> None:
        """Tell the backend this conversation is over (what it kept for it is freed)."""
        if self.on_end is not None:
            self.on_end(self.key)

    def add_frame(self, frame: np.ndarray) -> None:
        self.frames.append((time.monotonic(), frame))


@dataclass
class BrowserSession:
    """Everything the app keeps for one browser session."""

    key: str
    #: Tab name -> its chat.
    chats: dict[str, ChatSession] = field(default_factory=dict)
    #: Voices this session made: shown name -> (the backend's id for it, its base voice).
    voices: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Its last reply in any tab (an ``omni_app.ui.context.LastReply``), for the inside tab.
    last: object | None = None

    def end(self) -> None:
        """Stop its replies and release what the backend kept for its chats."""
        for chat in self.chats.values():
            chat.stop()
            chat.end()


def session_key(request) -> str:
    """The browser session a gradio request belongs to."""
    return getattr(request, "session_hash", None) or "default"


class Sessions:
    """All browser sessions, least recently used first, at most ``limit``."""

    def __init__(self, limit: int = 500, on_end: Callable[[str], None] | None = None,
                 on_leave: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        #: Called with a chat's key when its conversation ends (``Backend.end_session``).
        self.on_end = on_end
        #: Called with a browser session's key when it leaves, unloaded or evicted (its files go).
        self.on_leave = on_leave
        self._sessions: OrderedDict[str, BrowserSession] = OrderedDict()
        self._lock = threading.Lock()
        self._leaving: list[threading.Thread] = []

    def _leave(self, sessions: list[BrowserSession]) -> None:
        for session in sessions:
            session.end()
            if self.on_leave is not None:
                self.on_leave(session.key)

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait (at most ``timeout`` seconds) until evicted sessions have released what they held."""
        deadline = time.monotonic() + timeout
        with self._lock:
            leaving = list(self._leaving)
        for thread in leaving:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in leaving)

    def get(self, request) -> BrowserSession:
        """The request's session (created if new), now the most recently used."""
        key = session_key(request)
        evicted = []
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = BrowserSession(key)
                while len(self._sessions) > self.limit:
                    evicted.append(self._sessions.popitem(last=False)[1])
            self._sessions.move_to_end(key)
        if evicted:
            # Ending tells the backend (an HTTP call to a model server): not in this user's request.
            thread = threading.Thread(target=self._leave, args=(evicted,), daemon=True)
            with self._lock:
                self._leaving = [t for t in self._leaving if t.is_alive()] + [thread]
            thread.start()
        return session

    def find(self, request) -> BrowserSession | None:
        """The request's session if it exists (reading never creates one)."""
        return self._sessions.get(session_key(request))

    def chat(self, request, tab: str) -> ChatSession:
        """The session's chat in ``tab``."""
        session = self.get(request)
        with self._lock:
            if tab not in session.chats:
                session.chats[tab] = ChatSession(key=f"{tab}:{session.key}", on_end=self.on_end)
            return session.chats[tab]

    def drop(self, request) -> None:
        """The browser tab unloaded: forget its session and release what the backend kept."""
        with self._lock:
            session = self._sessions.pop(session_key(request), None)
        if session is not None:
            self._leave([session])

    def tab(self, name: str) -> SessionStore:
        """The chats of one tab."""
        return SessionStore(name, self)

    def count(self, tab: str) -> int:
        """Sessions with a chat in ``tab``."""
        with self._lock:
            return sum(tab in s.chats for s in self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)


class SessionStore:
    """One tab's view of the sessions: each browser session's chat in this tab."""

    def __init__(self, name: str, sessions: Sessions | None = None) -> None:
        #: The tab's name: sessions of different tabs are different conversations.
        self.name = name
        self.sessions = sessions if sessions is not None else Sessions()

    def get(self, request) -> ChatSession:
        return self.sessions.chat(request, self.name)

    def __len__(self) -> int:
        return self.sessions.count(self.name)
