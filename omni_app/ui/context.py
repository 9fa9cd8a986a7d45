"""What every tab shares: the backend, the limits, and per-session voices and last replies."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..api import Backend
from ..config import GenerationLimits, MediaLimits
from ..conversation import Conversation
from ..errors import RequestError
from ..events import Done
from .session import session_key

#: Browser sessions whose last reply and own voices are kept (API clients never unload).
MAX_SESSIONS = 500


@dataclass
class LastReply:
    """A finished reply: what was asked and how it ended (its trace inside ``done``)."""

    conversation: Conversation
    done: Done


class AppContext:
    """The backend and the app-wide settings, plus the little the app keeps per session."""

    def __init__(self, backend: Backend, limits: GenerationLimits = GenerationLimits(),
                 media: MediaLimits = MediaLimits(), concurrency: int = 1) -> None:
        self.backend = backend
        self.limits = limits
        self.media = media
        if concurrency < 1:
            raise RequestError("At least one reply must be allowed at a time.")
        #: Replies (and other model work) this app runs at once; the rest wait in its queue.
        #: 1 for a model in this process (one GPU); more for a server that queues requests
        #: itself, so they reach it at once and each is told its place there.
        self.concurrency = concurrency
        self._lock = threading.Lock()
        #: Per session: the voices it made (shown name -> (id the backend knows it by, base voice)).
        self._voices: OrderedDict[str, dict[str, tuple[str, str]]] = OrderedDict()
        #: Per session: its last reply in any tab, for the "inside the model" tab.
        self._last: OrderedDict[str, LastReply] = OrderedDict()

    @property
    def info(self):
        return self.backend.info

    def voices_for(self, request) -> list[str]:
        """Voice names this browser session can pick: stock, saved, then its own."""
        listed = self.backend.voices()
        own = self._voices.get(session_key(request), {})
        return listed + [name for name in own if name not in listed]

    def add_session_voice(self, name: str, voice_id: str, base: str, request) -> None:
        """Remember a voice this session made: its name, the backend's id for it, its base."""
        if name in self.backend.stock_voices():
            raise RequestError(f"{name!r} is a stock voice; choose another name.")
        with self._lock:
            self._put(self._voices, session_key(request), {}).update({name: (voice_id, base)})

    def resolve_voice(self, name: str | None, request) -> str | None:
        """The id of the voice a session calls ``name`` (its own voices first)."""
        if name is None:
            return None
        return self._voices.get(session_key(request), {}).get(name, (name, ""))[0]

    def base_voice(self, name: str, request) -> str:
        """The stock voice ``name`` is built on (itself if it is one; else the default voice)."""
        stock = self.backend.stock_voices()
        if name in stock:
            return name
        return self._voices.get(session_key(request), {}).get(name, ("", stock[0]))[1] or stock[0]

    def remember(self, request, reply: LastReply) -> None:
        with self._lock:
            self._last.pop(session_key(request), None)
            self._put(self._last, session_key(request), reply)

    def last(self, request) -> LastReply | None:
        return self._last.get(session_key(request))

    def drop_session(self, request) -> None:
        with self._lock:
            self._voices.pop(session_key(request), None)
            self._last.pop(session_key(request), None)

    @property
    def sessions(self) -> int:
        """Sessions with anything kept (for tests of the bounds)."""
        return len(set(self._voices) | set(self._last))

    @staticmethod
    def _put(store: OrderedDict, key: str, value):
        entry = store.setdefault(key, value)
        store.move_to_end(key)
        while len(store) > MAX_SESSIONS:
            store.popitem(last=False)
        return entry
