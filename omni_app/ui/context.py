"""What every tab shares: the backend, the limits, and the browser sessions."""

from __future__ import annotations

from dataclasses import dataclass

from ..api import Backend
from ..config import GenerationLimits, MediaLimits
from ..conversation import Conversation
from ..errors import RequestError
from ..events import Done
from ..vad import VadOptions
from .session import Sessions, session_key
from .speech import SpeechStore

#: Browser sessions kept (API clients never unload); the least recently used go first.
MAX_SESSIONS = 500


@dataclass
class LastReply:
    """A finished reply: what was asked and how it ended (its trace inside ``done``)."""

    conversation: Conversation
    done: Done


class AppContext:
    """The backend and the app-wide settings, plus the browser sessions (one object each)."""

    def __init__(self, backend: Backend, limits: GenerationLimits = GenerationLimits(),
                 media: MediaLimits = MediaLimits(), vad: VadOptions = VadOptions()) -> None:
        self.backend = backend
        self.limits = limits
        self.media = media
        #: Turn-taking defaults (the chat tabs let each user change the end-of-turn pause).
        self.vad = vad
        #: Replies' speech on its way to the page, and the WAV files written of it.
        self.speech = SpeechStore()
        #: Every browser session's chats, voices and last reply; what the backend keeps for
        #: a chat is released when its session goes (and on Clear).
        self.sessions = Sessions(MAX_SESSIONS, on_end=backend.end_session, on_leave=self.speech.drop_session)

    @property
    def info(self):
        return self.backend.info

    def _voices(self, request) -> dict[str, tuple[str, str]]:
        session = self.sessions.find(request)
        return session.voices if session is not None else {}

    def voices_for(self, request) -> list[str]:
        """Voice names this browser session can pick: stock, saved, then its own."""
        listed = self.backend.voices()
        return listed + [name for name in self._voices(request) if name not in listed]

    def add_session_voice(self, name: str, voice_id: str, base: str, request) -> None:
        """Remember a voice this session made: its name, the backend's id for it, its base."""
        if name in self.backend.stock_voices():
            raise RequestError(f"{name!r} is a stock voice; choose another name.")
        self.sessions.get(request).voices[name] = (voice_id, base)

    def resolve_voice(self, name: str | None, request) -> str | None:
        """The id of the voice a session calls ``name`` (its own voices first)."""
        if name is None:
            return None
        return self._voices(request).get(name, (name, ""))[0]

    def base_voice(self, name: str, request) -> str:
        """The stock voice ``name`` is built on (itself if it is one; else the default voice)."""
        stock = self.backend.stock_voices()
        if name in stock:
            return name
        return self._voices(request).get(name, ("", stock[0]))[1] or stock[0]

    def remember(self, request, reply: LastReply) -> None:
        session = self.sessions.find(request)  # a session that closed meanwhile is not made again
        if session is not None:
            session.last = reply

    def last(self, request) -> LastReply | None:
        session = self.sessions.find(request)
        return session.last if session is not None else None

    def drop_session(self, request) -> None:
        """The browser tab unloaded: its chats, voices and last reply go, and the backend's state for
        them; the speech files it was played are removed."""
        self.sessions.drop(request)
        self.speech.drop_session(session_key(request))
