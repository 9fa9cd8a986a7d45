"""A model on a server, as a :class:`~omni_app.api.Backend`: the app and CLI with ``--backend URL``.

Speaks to ``python -m omni_app serve`` (or a relay or Ray Serve deployment of it), to any
OpenAI-shaped stream, and to vLLM-Omni (see :mod:`.dialects`). Speech arrives as the
same int16 chunks the local engine yields; times to first text and audio are measured
here, at the client (the server's own figures stay in ``Stats.extra`` as ``server_*``).
Stopping a reply closes its HTTP response, which makes the server stop the generation.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from urllib.parse import quote

import httpx

from ..api import BackendInfo, BackendStatus, CancelToken, Request, VoiceList, watch_cancel
from ..config import STOCK_VOICES
from ..errors import BackendUnavailable, RequestError, Unsupported, hidden
from ..events import Done, Event, Stats, StreamClock
from ..media import MODEL_SAMPLE_RATE
from . import encode
from .dialects import ChunkReader, server_error, sse_data
from .pcm import data_url, float_wav

log = logging.getLogger(__name__)

DIALECTS = ("auto", encode.OPENAI, encode.VLLM_OMNI)
#: Qwen2.5-Omni's voices, for servers that don't list theirs (vLLM-Omni).
QWEN_VOICES = list(STOCK_VOICES)
#: Read timeout of requests that need no model time (voices, models, ending a session).
METADATA_TIMEOUT_S = 10.0


class RemoteBackend:
    """The model behind an OpenAI-compatible server at ``url``."""

    def __init__(self, url: str, dialect: str = "auto", api_key: str | None = None, timeout: float = 600.0) -> None:
        if dialect not in DIALECTS:
            raise RequestError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
        self.url = base_url(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Reads may wait long: a request can queue behind others for the model.
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))
        # Replies go on connections of their own (none kept open for reuse), so that each can be cut.
        self._streams = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0),
                                     limits=httpx.Limits(max_keepalive_connections=0))
        self._probe(dialect)

    def _probe(self, dialect: str) -> None:
        """Ask the server what it is, what it serves and what it can do."""
        health = self._get("/health", required=False)
        #: Whether this is our own server (it understands our extensions).
        self.ours = isinstance(health, dict) and health.get("server") == "omni_app"
        listing = self._get("/v1/models")
        card = (listing.get("data") or [{}])[0] if isinstance(listing, dict) else {}
        card = card if isinstance(card, dict) else {}
        if dialect == "auto":
            vllm = card.get("owned_by") in ("vllm", "vllm-omni")
            dialect = encode.OPENAI if self.ours or not vllm else encode.VLLM_OMNI
        self.dialect = dialect
        self.model = str(card.get("id") or "model")
        caps = card.get("capabilities") if self.ours and isinstance(card.get("capabilities"), dict) else {}
        self._stock = list(card.get("stock_voices") or QWEN_VOICES) if self.ours else list(QWEN_VOICES)
        # Our own server lists its voices (made ones too); another server has its stock ones.
        self._voices = VoiceList(self._list_voices if self.ours else lambda: list(self._stock),
                                 list(card.get("voices") or self._stock), f"the server at {self.url}")
        kind = "omni_app" if self.ours else "vLLM-Omni" if dialect == encode.VLLM_OMNI else "OpenAI-compatible"
        self._info = BackendInfo(
            model=self.model, description=f"{card.get('description') or self.model} · {kind} server at {self.url}",
            is_tiny=bool(caps.get("is_tiny")), can_inspect=False,
            can_speak_text=self.ours and bool(caps.get("speak_text")),
            can_create_voices=self.ours and bool(caps.get("create_voices")),
            can_save_voices=self.ours and bool(caps.get("save_voices")),
            engine=str(caps.get("engine") or ("vllm-omni" if dialect == encode.VLLM_OMNI else "remote")),
        )

    @property
    def info(self) -> BackendInfo:
        return self._info

    def stock_voices(self) -> list[str]:
        return list(self._stock)

    def voices(self) -> list[str]:
        return self._voices.get()

    def status(self) -> BackendStatus:
        # The server's own /health says how busy it is; a relay answers for its own requests.
        return BackendStatus()

    def warmup(self) -> None:
        """The server warmed its model up when it started."""

    def _list_voices(self) -> list[str]:
        return [v["id"] for v in self._get("/v1/audio/voices")["data"]]

    def stream(self, request: Request, cancel: CancelToken | None = None) -> Iterator[Event]:
        if request.speak_text is not None:
            if not self._info.can_speak_text:
                raise Unsupported(f"The model server at {self.url} can't speak a given text; choose a model in this "
                                  "process or our own server for exact-text speech.")
            yield from self._events("/v1/audio/speech", self._speech_body(request), cancel)
        else:
            yield from self._events("/v1/chat/completions", self._chat_body(request), cancel)

    def create_voice(self, name: str, reference_16k, base: str, save: bool = False) -> str:
        if not self._info.can_create_voices:
            raise Unsupported(f"The model server at {self.url} can't make new voices; its stock voices work.")
        audio = data_url("audio/wav", float_wav(reference_16k, MODEL_SAMPLE_RATE))
        made = self._send("POST", "/v1/audio/voices", {"name": name, "base": base, "save": save, "audio": audio})
        self._voices.stale()  # ask again: a saved voice is listed from now on
        return str(made["id"])

    def inspect(self, conversation, trace):
        raise Unsupported(f"The model runs on the server at {self.url}: looking inside it needs its weights in this "
                          "process (start the app with --model instead of --backend).")

    def end_session(self, session: str) -> None:
        if not self.ours:
            return  # vLLM-Omni keeps nothing per conversation
        try:
            self._send("DELETE", f"/v1/sessions/{quote(session, safe='')}", timeout=METADATA_TIMEOUT_S)
        except (BackendUnavailable, RequestError) as exc:
            log.warning("could not tell the server that session %s ended: %s", session, exc)

    def _chat_body(self, request: Request) -> dict:
        conversation = request.conversation
        body: dict = {"model": self.model, "messages": encode.messages(conversation, self.dialect), "stream": True,
                      "stream_options": {"include_usage": True},
                      "modalities": ["text", "audio"] if request.voice else ["text"]}
        if request.seed is not None:
            body["seed"] = request.seed
        if self.dialect == encode.VLLM_OMNI:
            # vLLM-Omni reads the length from max_tokens and the voice from a top-level field.
            body["max_tokens"] = request.limits.max_new_tokens
            if request.voice:
                body["speaker"] = request.voice
            if encode.has_video_sound(conversation):
                body["mm_processor_kwargs"] = {"use_audio_in_video": True}
            return body
        body["max_completion_tokens"] = request.limits.max_new_tokens
        if request.voice:
            body["audio"] = {"voice": request.voice, "format": "pcm16"}
        if self.ours:
            body.update(self._extensions(request))
            if request.session:
                body["session"] = request.session
        return body

    def _speech_body(self, request: Request) -> dict:
        return {"model": self.model, "input": request.speak_text, "voice": request.voice, "response_format": "pcm",
                "stream_format": "sse", **self._extensions(request),
                **({"seed": request.seed} if request.seed is not None else {})}

    @staticmethod
    def _extensions(request: Request) -> dict:
        return {"max_speech_seconds": request.limits.max_speech_seconds, "speech_sampling": request.speech_sampling}

    def _events(self, path: str, body: dict, cancel: CancelToken | None) -> Iterator[Event]:
        clock = StreamClock("server", self._info.engine)
        reader = ChunkReader(self.dialect, self.url)
        connection = Connection()
        try:
            # Watched from the start: a Stop while the server queues or reads the prompt (before
            # it answers with headers) cuts the connection too, and the server drops the request.
            with watch_cancel(cancel, connection.cut, "omni-remote-cancel"), \
                    self._streams.stream("POST", path, json=body, extensions={"trace": connection.trace}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._refused(response)
                for data in sse_data(response.iter_lines()):
                    for event in reader.feed(data):
                        yield clock.seen(event)
                    if cancel is not None and cancel.is_set():
                        break
        except (httpx.HTTPError, httpx.StreamError) as exc:
            if cancel is None or not cancel.is_set():
                if clock.first_text is None and clock.first_audio is None:
                    raise self._unreachable(exc) from exc
                raise hidden(BackendUnavailable, f"The model server at {self.url} stopped answering in the middle "
                             "of the reply. Ask again.", exc, log) from exc
        cancelled = cancel is not None and cancel.is_set()
        if not cancelled and reader.finish_reason is None and not reader.stats:
            raise BackendUnavailable(f"The model server at {self.url} ended the reply before finishing it.")
        server = reader.stats
        if cancelled and not server:
            yield clock.cut_short()
            return
        extra = {k: float(v) for k, v in (server.get("extra") or {}).items() if isinstance(v, (int, float))}
        if server.get("seed") is not None:
            extra["seed"] = float(server["seed"])
        if reader.usage.get("prompt_tokens") is not None:
            extra["prompt_tokens"] = float(reader.usage["prompt_tokens"])
        # The server's times, which the clock keeps as server_* beside its own.
        timed = {k: None if server.get(k) is None else float(server[k])
                 for k in ("time_to_first_text", "time_to_first_audio", "total_time")}
        stats = Stats(
            **timed,
            text_tokens=int(server.get("text_tokens", reader.usage.get("completion_tokens", clock.texts)) or 0),
            codec_codes=int(server.get("codec_codes") or 0), audio_seconds=clock.audio_seconds,
            engine=str(server.get("engine") or self._info.engine), queue_time=float(server.get("queue_time") or 0.0),
            extra=extra, served_by=str(server.get("served_by") or ""), batch_peak=int(server.get("batch_peak") or 0),
        )
        reason = "cancelled" if cancelled else "length" if reader.finish_reason == "length" else "finished"
        yield Done(reason, clock.restamp(stats))

    def _get(self, path: str, required: bool = True):
        try:
            # Metadata answers at once; the long read timeout is for replies waiting their turn.
            response = self._http.get(path, timeout=METADATA_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            if not required:
                return None
            raise self._refused(response)
        try:
            return response.json()
        except ValueError:
            return None

    def _send(self, method: str, path: str, body: dict | None = None, timeout=httpx.USE_CLIENT_DEFAULT) -> dict:
        try:
            response = self._http.request(method, path, json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise self._refused(response)
        return response.json()

    def _refused(self, response: httpx.Response):
        """A 4xx becomes the server's own message; a 5xx says the server failed."""
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else body
        message = (error.get("message") if isinstance(error, dict) else None) or response.text[:200] or "no message"
        if response.status_code >= 500 or response.status_code == 429:  # 429: busy, ask again later
            return BackendUnavailable(f"The model server at {self.url} failed (HTTP {response.status_code}): {message}")
        if response.status_code in (401, 403):
            return RequestError(f"The model server at {self.url} refused the request: {message}")
        return server_error({"message": message, "code": response.status_code}, self.url)

    def _unreachable(self, exc: Exception) -> BackendUnavailable:
        if isinstance(exc, httpx.ConnectError):
            why = "nothing answers there"
        elif isinstance(exc, httpx.TimeoutException):
            why = "it did not answer in time"
        else:
            return hidden(BackendUnavailable, f"The model server at {self.url} can't be reached (the connection "
                          "failed). Check that it is running and that the URL is right.", exc, log)
        return BackendUnavailable(f"The model server at {self.url} can't be reached ({why}). Check that it is running "
                                  "and that the URL is right.")


def base_url(url: str) -> str:
    """``http://host:port`` from what a user typed (a trailing ``/`` or ``/v1`` is dropped)."""
    url = (url or "").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise RequestError(f"The backend must be an http(s) URL such as http://gpu-box:8000, not {url!r}.")
    return url[:-3].rstrip("/") if url.endswith("/v1") else url


class Connection:
    """The TCP connection of one streamed request, so that it can be cut while a thread waits on it.

    The request runs on a client that opens a connection per request; httpx's trace hook
    hands over the connection as it opens, before anything is sent.
    """

    def __init__(self) -> None:
        self._stream = None

    def trace(self, name: str, info: dict) -> None:
        if name == "connection.connect_tcp.complete":
            self._stream = info.get("return_value")

    def cut(self) -> None:
        """End the request now, even while a read is blocked on it: shutting the socket down
        wakes the reading thread (closing it would not), and the server sees the connection
        end and stops the generation, or drops the request from its queue."""
        sock = self._stream.get_extra_info("socket") if self._stream is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: nothing left to stop
