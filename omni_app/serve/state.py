"""What a server is built with (:class:`ServerSettings`) and what it keeps (:class:`ServerState`)."""

from __future__ import annotations

import contextlib
import hmac
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import Request

from ..api import Backend, CancelToken
from ..api import Request as OmniRequest
from ..config import MAX_ACTIVE, GenerationLimits, MediaLimits
from ..errors import RequestError
from .bridge import Pump
from .responses import ApiError

#: Transcripts of recent spoken replies, so a client can refer to one by its audio id.
MAX_TRANSCRIPTS = 2048


def default_body_limit(media: MediaLimits) -> int:
    """Room for the largest audio (16-bit stereo at 48 kHz), video (10 Mbit/s) or uncompressed
    image the media limits allow, base64-encoded, plus the rest of the request."""
    audio = media.max_audio_seconds * 48000 * 2 * 2
    video = media.max_video_seconds * 10e6 / 8
    image = media.max_image_pixels * 3
    return int(max(audio, video, image) * 4 / 3) + 1_000_000


@dataclass(frozen=True)
class ServerSettings:
    """What a server accepts. Built once at the entry point."""

    #: The longest reply a client may ask for (requests may ask for less).
    limits: GenerationLimits = GenerationLimits()
    media: MediaLimits = MediaLimits()
    #: Clients must send ``Authorization: Bearer <api_key>``; ``None``: no key needed.
    api_key: str | None = None
    #: Largest request body in bytes; ``None``: :func:`default_body_limit`.
    max_body_bytes: int | None = None
    #: Requests in progress at once (generating or waiting for the model); more get a 429.
    max_active: int = MAX_ACTIVE

    def __post_init__(self) -> None:
        if self.max_active < 1:
            raise RequestError("max_active must be at least 1")
        if self.body_limit < 1024:
            raise RequestError("the request body limit must be at least 1 KB")

    @property
    def body_limit(self) -> int:
        return self.max_body_bytes if self.max_body_bytes is not None else default_body_limit(self.media)


class ServerState:
    """The backend and what the server counts and remembers, one per app."""

    def __init__(self, backend: Backend, settings: ServerSettings) -> None:
        self.backend = backend
        self.settings = settings
        self.started = time.time()
        self.active = 0
        self.counts = {"finished": 0, "cancelled": 0, "failed": 0}
        self._lock = threading.Lock()
        self._transcripts: OrderedDict[str, str] = OrderedDict()

    @contextlib.asynccontextmanager
    async def admitted(self):
        """A place among the requests in progress (429 when there is none), taken before the
        body is read and decoded: a busy server refuses large uploads without doing that work.
        The place is given back on leaving, unless :meth:`open` handed it to a stream."""
        with self._lock:
            if self.active >= self.settings.max_active:
                raise ApiError(429, f"The server is busy: {self.active} requests are in progress. Try again shortly.",
                               "rate_limit_error", code="busy")
            self.active += 1
        place = {"held": True}
        try:
            yield place
        finally:
            if place["held"]:
                with self._lock:
                    self.active -= 1

    def open(self, request: OmniRequest, place: dict) -> Pump:
        """Start a backend stream for ``request`` in an :meth:`admitted` place; the stream gives it back."""
        cancel = CancelToken()
        pump = Pump(self.backend.stream(request, cancel), cancel, self._closed)
        place["held"] = False
        return pump

    def _closed(self, pump: Pump) -> None:
        with self._lock:
            self.active -= 1
            outcome = "failed" if pump.failed else "finished" if pump.finished else "cancelled"
            self.counts[outcome] += 1

    def remember(self, audio_id: str, text: str) -> None:
        with self._lock:
            self._transcripts[audio_id] = text
            while len(self._transcripts) > MAX_TRANSCRIPTS:
                self._transcripts.popitem(last=False)

    def transcript(self, audio_id: str) -> str | None:
        return self._transcripts.get(audio_id)

    def check_key(self, request: Request) -> None:
        """Refuse requests without the bearer token, when the server has one (a route dependency)."""
        self.check_headers(request.headers)

    def check_headers(self, headers, other: str = "") -> None:
        """Refuse a request whose headers lack the bearer token, when the server has one; ``other``:
        the key given another way (a browser's WebSocket sends it as a subprotocol)."""
        key = self.settings.api_key
        if not key:
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        given = given if scheme.lower() == "bearer" and given.strip() else other
        if not given:
            raise ApiError(401, "This server needs an API key: send 'Authorization: Bearer <key>'.",
                           code="missing_api_key")
        if not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(401, "The API key is not valid for this server.", code="invalid_api_key")

    def default_voice(self) -> str:
        return self.backend.stock_voices()[0]
