"""``WS /v1/realtime``: a spoken conversation over one WebSocket, as OpenAI's Realtime API holds it.

A client streams microphone audio in (``input_audio_buffer.append``); the server hears
where each turn ends (silero VAD, one detector per connection) or the client commits the
buffer itself; the reply streams back as speech and its transcript while it is made. Speech
during a reply cancels it, and ``conversation.item.truncate`` cuts the reply's text to what
was heard. The conversation lives with the connection (its caches are the model's session
for it) and goes when the socket closes. Replies go through the server's admission and the
model's scheduler like any other request, so many connections are batched together.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from dataclasses import replace

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..config import SPEECH_SAMPLE_RATE
from ..conversation import AudioPart, Conversation, TextPart, Turn
from ..errors import OmniError, unexpected
from ..media import audio_from_array
from .parts import WireError
from .realtime_input import InputAudio, Started
from .realtime_reply import run_reply
from .realtime_wire import (
    ClientTooSlow,
    Ids,
    RealtimeConfig,
    error_event,
    heard_share,
    item_parts,
    message_item,
    output_tokens,
    updated,
)
from .responses import ApiError, error_of
from .state import ServerState

log = logging.getLogger(__name__)

#: A client that has not taken an event for this long is cut off (its reply is cancelled).
SEND_SECONDS = 10.0
#: Turns a connection keeps (each may hold a minute of audio or an image).
MAX_TURNS = 64


class RealtimeConnection:
    """One client's session: its settings, input buffer, conversation and reply in progress."""

    def __init__(self, ws: WebSocket, state: ServerState) -> None:
        self.ws = ws
        self.state = state
        self.ids = Ids()
        self.id = self.ids("sess")
        self.model = state.backend.info.model
        self.config = RealtimeConfig(voice=state.default_voice())
        self.conversation = Conversation()
        #: item id -> (index of its turn in the conversation, seconds of speech it was given)
        self.items: dict[str, tuple[int, float]] = {}
        self.last_item: str | None = None
        self.input = InputAudio(state.settings.media.max_audio_seconds)
        self.speech_item: str | None = None
        self.reply: asyncio.Task | None = None
        self.reply_cancel = None
        self.cancel_reason = "client_cancelled"
        self._send_lock = asyncio.Lock()

    # -- sending -------------------------------------------------------------------------

    async def send(self, event: dict) -> None:
        event.setdefault("event_id", self.ids("event"))
        async with self._send_lock:
            try:
                await asyncio.wait_for(self.ws.send_text(json.dumps(event, separators=(",", ":"))), SEND_SECONDS)
            except TimeoutError:
                raise ClientTooSlow() from None

    async def refuse(self, exc: Exception, client_event: str | None) -> None:
        if isinstance(exc, WireError):
            await self.send(error_event(self.ids("event"), str(exc), exc.param, exc.code, client_event))
        elif isinstance(exc, OmniError):
            status, body = error_of(exc)
            error = body["error"]
            await self.send(error_event(self.ids("event"), error["message"], error.get("param"), error.get("code"),
                                        client_event, error.get("type") or "invalid_request_error"))
        else:
            await self.send(error_event(self.ids("event"), unexpected(exc, "a realtime event", log), None, None,
                                        client_event, "server_error"))

    # -- the connection ------------------------------------------------------------------

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.config.as_json(self.id, self.model)})
        try:
            while True:
                try:
                    text = await self.ws.receive_text()
                except WebSocketDisconnect:
                    return
                except (RuntimeError, KeyError):  # a binary frame: not an event
                    await self.send(error_event(self.ids("event"), "Events are JSON text frames.", None,
                                                "invalid_event"))
                    continue
                try:
                    event = json.loads(text)
                except ValueError:
                    await self.send(error_event(self.ids("event"), "The event is not valid JSON.", None,
                                                "invalid_json"))
                    continue
                client_id = None
                try:
                    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                        raise WireError("An event is a JSON object with a 'type'.", "type", "invalid_event")
                    client_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
                    await self.handle(event)
                except (ClientTooSlow, WebSocketDisconnect):
                    raise
                except Exception as exc:  # every other mistake is told, and the session goes on
                    await self.refuse(exc, client_id)
        except ClientTooSlow:
            log.warning("realtime session %s: the client stopped reading; closing it", self.id)
            await self._close(1008, "The client did not read the server's events in time.")
        finally:
            await self._end()

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, reason=reason), 2.0)
        except Exception:  # noqa: BLE001 - the socket may be gone already
            pass

    async def _end(self) -> None:
        """The socket is gone: stop the reply and free what the model kept for this conversation."""
        if self.reply is not None and not self.reply.done():
            self.reply_cancel.cancel()
            self.reply.cancel()
        await run_in_threadpool(self.state.backend.end_session, self.id)

    # -- client events -------------------------------------------------------------------

    async def handle(self, event: dict) -> None:
        kind = event["type"]
        if kind == "session.update":
            self.config = updated(self.config, event.get("session"), self.state.backend.voices())
            await self.send({"type": "session.updated", "session": self.config.as_json(self.id, self.model)})
        elif kind == "input_audio_buffer.append":
            await self.append(event.get("audio"))
        elif kind == "input_audio_buffer.commit":
            if not len(self.input.buffer):
                raise WireError("The input audio buffer is empty: append audio before committing.", None,
                                "input_audio_buffer_commit_empty")
            await self.commit(self.input.take())
        elif kind == "input_audio_buffer.clear":
            self.input.clear()
            await self.send({"type": "input_audio_buffer.cleared"})
        elif kind == "conversation.item.create":
            await self.add_item(event.get("item"))
        elif kind == "conversation.item.truncate":
            await self.truncate(event)
        elif kind == "response.create":
            if self.reply is not None and not self.reply.done():
                raise WireError("A response is already in progress: cancel it first (response.cancel).", None,
                                "conversation_already_has_active_response")
            asked = event.get("response") if isinstance(event.get("response"), dict) else {}
            if asked.get("tools"):
                raise WireError("response.tools: tools are not supported by this server.", "response.tools",
                                "unsupported_field")
            config = self.config
            if "max_output_tokens" in asked:
                config = replace(config, max_output_tokens=output_tokens(asked["max_output_tokens"],
                                                                          "response.max_output_tokens"))
            self.start_reply(config)
        elif kind == "response.cancel":
            await self.cancel_reply("client_cancelled")
        else:
            raise WireError(f"Unknown or unsupported event type {kind!r}.", "type", "invalid_event")

    async def append(self, audio) -> None:
        if not isinstance(audio, str):
            raise WireError("input_audio_buffer.append needs 'audio': base64 16-bit PCM at 24 kHz, mono.", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise WireError("audio is not valid base64.", "audio", "invalid_base64") from None
        if len(data) % 2:
            raise WireError("audio must be 16-bit PCM: an even number of bytes.", "audio", "invalid_audio")
        detection = self.config.turn_detection
        for happened in await run_in_threadpool(self.input.append, np.frombuffer(data, "<i2"), detection):
            if isinstance(happened, Started):
                self.speech_item = self.ids("item")
                await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": happened.at_ms,
                                 "item_id": self.speech_item})
                if detection.interrupt_response:
                    await self.cancel_reply("turn_detected")
            else:
                await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": happened.at_ms,
                                 "item_id": self.speech_item})
                await self.commit(happened.audio, self.speech_item)
                if detection.create_response:
                    if self.reply is not None and not self.reply.done():
                        await asyncio.wait({self.reply})  # the interrupted one ends within a step
                    self.start_reply()

    async def commit(self, samples: np.ndarray, item_id: str | None = None) -> None:
        """Committed input audio becomes a user item."""
        item_id = item_id or self.ids("item")
        audio = await run_in_threadpool(audio_from_array, samples, SPEECH_SAMPLE_RATE, self.state.settings.media,
                                        "The input audio")
        previous = self.last_item
        self.add_turn(item_id, Turn("user", (AudioPart(audio),)))
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        item = message_item(item_id, "user", [{"type": "input_audio", "transcript": None}])
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})

    async def add_item(self, item) -> None:
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise WireError("item must be a message (function calls are not supported).", "item.type",
                            "unsupported_field")
        role, content = item.get("role"), item.get("content")
        if role not in ("user", "assistant"):
            raise WireError("item.role must be 'user' or 'assistant' (put instructions in session.instructions).",
                            "item.role")
        if not isinstance(content, list) or not content:
            raise WireError("item.content must be a non-empty list of parts.", "item.content")
        parts = await run_in_threadpool(item_parts, role, content, self.state.settings.media)
        item_id = item.get("id") if isinstance(item.get("id"), str) else self.ids("item")
        previous = self.last_item
        self.add_turn(item_id, Turn(role, parts))
        shown = message_item(item_id, role, [{k: v for k, v in c.items() if k not in ("audio", "image_url")}
                                             for c in content])
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": shown})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": shown})

    def add_turn(self, item_id: str, turn: Turn, speech_seconds: float = 0.0) -> None:
        turns = self.conversation.turns + (turn,)
        # Bounded: the oldest turns go (the model's context budget left them out of the prompt long before).
        dropped = max(0, len(turns) - MAX_TURNS)
        if dropped:
            self.items = {k: (i - dropped, s) for k, (i, s) in self.items.items() if i >= dropped}
        self.conversation = replace(self.conversation, turns=turns[dropped:])
        self.items[item_id] = (len(self.conversation.turns) - 1, speech_seconds)
        self.last_item = item_id

    async def truncate(self, event: dict) -> None:
        item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
        if item_id not in self.items:
            raise WireError(f"There is no item {item_id!r} in this conversation.", "item_id", "item_not_found")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise WireError("audio_end_ms must be a whole number of milliseconds.", "audio_end_ms")
        index, seconds = self.items[item_id]
        turn = self.conversation.turns[index]
        if turn.role != "assistant" or seconds <= 0:
            raise WireError("Only an assistant item with speech can be truncated.", "item_id")
        if end_ms > seconds * 1000 + 1:
            raise WireError(f"audio_end_ms is past the end of the item's audio ({seconds * 1000:.0f} ms).",
                            "audio_end_ms")
        heard = heard_share(turn.text, end_ms / (seconds * 1000))
        turns = list(self.conversation.turns)
        turns[index] = Turn("assistant", (TextPart(heard or "…"),))
        self.conversation = replace(self.conversation, turns=tuple(turns))
        self.items[item_id] = (index, end_ms / 1000)
        await self.send({"type": "conversation.item.truncated", "item_id": item_id,
                         "content_index": event.get("content_index", 0), "audio_end_ms": end_ms})

    # -- replies -------------------------------------------------------------------------

    def start_reply(self, config: RealtimeConfig | None = None) -> None:
        if not self.conversation.turns or self.conversation.turns[-1].role != "user":
            raise WireError("There is nothing to answer: add a user item (or speak) first.", None,
                            "conversation_empty")
        self.reply = asyncio.create_task(run_reply(self, self.ids("resp"), config or self.config))

    async def cancel_reply(self, reason: str) -> None:
        if self.reply is not None and not self.reply.done() and self.reply_cancel is not None:
            self.reply_cancel.cancel()
            self.cancel_reason = reason


async def realtime_endpoint(ws: WebSocket, state: ServerState) -> None:
    """Accept the socket when the key is right (a bearer header, or the browsers' subprotocol), then serve it."""
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    prefix = "openai-insecure-api-key."
    try:
        state.check_headers(ws.headers, next((p[len(prefix):] for p in offered if p.startswith(prefix)), ""))
    except ApiError as refused:
        await _deny(ws, refused)
        return
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    await RealtimeConnection(ws, state).run()


async def _deny(ws: WebSocket, refused: ApiError) -> None:
    """The refusal as an HTTP answer before the upgrade, where the server can send one; else the socket is refused."""
    from starlette.responses import JSONResponse

    status, body = error_of(refused)
    try:
        await ws.send_denial_response(JSONResponse(body, status_code=status))
    except RuntimeError:
        await ws.close(code=1008)
