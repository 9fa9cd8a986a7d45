"""The OpenAI-compatible HTTP server over any :class:`~omni_app.api.Backend`.

:func:`make_app` builds a FastAPI app; everything it keeps lives in that app (the backend,
the settings, counters), so one process may hold several, and a Ray Serve deployment can
mount it as its ingress. Endpoints:

- ``POST /v1/chat/completions``: text, images, audio and videos in; text, or text and
  speech out, streamed as it is generated (``stream: true``) or whole;
- ``POST /v1/audio/speech``: exactly the given text, spoken; the body streams;
- ``WS /v1/realtime``: a spoken conversation over a WebSocket, OpenAI's Realtime API (see
  :mod:`.realtime`);
- ``GET /v1/models``; ``GET /health`` (no key needed);
- extensions: ``GET/POST /v1/audio/voices`` (list, make a voice from a recording) and
  ``DELETE /v1/sessions/{id}`` (a conversation is over).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..api import Backend
from ..errors import Unsupported
from ..events import AudioChunk, Done
from .bridge import END, ClientGone, Pump
from .pcm import SPEECH_RATE, pcm16, wav_header
from .realtime import realtime_endpoint
from .replies import ChatChunks, speech_delta, speech_done, whole_reply
from .responses import ApiError, ClosingStreamingResponse, error_of, install_error_handlers, read_json, sse
from .state import ServerSettings, ServerState
from .wire import ChatCall, parse_chat, parse_speech, parse_voice

log = logging.getLogger(__name__)

#: The status nginx uses for "client closed the request" (nobody reads it: the client is gone).
CLIENT_CLOSED = 499


def make_app(backend: Backend, settings: ServerSettings = ServerSettings()) -> FastAPI:
    """The HTTP API over ``backend``."""
    state = ServerState(backend, settings)
    # No generated docs: the API is OpenAI's (see the README), and every open route is one more to guard.
    app = FastAPI(title="omni_app", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.omni = state
    install_error_handlers(app)
    api = APIRouter(prefix="/v1", dependencies=[Depends(state.check_key)])

    @app.get("/health")
    def health() -> dict:
        info = state.backend.info
        now = state.backend.status()
        # Open to anyone (no key): no description, which for a relay names the server behind it.
        return {"status": "ok", "server": "omni_app", "version": __version__, "model": info.model,
                "engine": info.engine,
                "busy": state.active > 0 if now.busy is None else now.busy,
                "waiting": now.waiting, "active": state.active,
                "replicas": now.replicas, "requests": dict(state.counts)}

    @api.get("/models")
    def models() -> dict:
        return {"object": "list", "data": [model_card(state)]}

    @api.get("/models/{model_id:path}")
    def model(model_id: str) -> dict:
        card = model_card(state)
        if model_id != card["id"]:
            raise ApiError(404, f"This server serves {card['id']!r}, not {model_id!r}.", param="model",
                           code="model_not_found")
        return card

    @api.get("/audio/voices")
    def voices() -> dict:
        stock = set(state.backend.stock_voices())
        return {"object": "list", "data": [{"id": v, "object": "audio.voice", "name": v, "stock": v in stock}
                                           for v in state.backend.voices()]}

    @api.post("/audio/voices")
    async def create_voice(request: Request) -> dict:
        if not state.backend.info.can_create_voices:
            raise Unsupported("The model behind this server can't make new voices.")
        body = await read_json(request, settings.body_limit)
        call = await run_in_threadpool(parse_voice, body, settings.media, state.default_voice())
        voice_id = await run_in_threadpool(state.backend.create_voice, call.name, call.reference_16k, call.base,
                                           call.save)
        return {"id": voice_id, "object": "audio.voice", "name": call.name, "base": call.base, "saved": call.save}

    @api.delete("/sessions/{session}")
    def end_session(session: str) -> dict:
        state.backend.end_session(session)
        return {"id": session, "object": "session", "deleted": True}

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket):
        # The key is checked by the endpoint itself: a browser sends it as a subprotocol.
        await realtime_endpoint(ws, state)

    @api.post("/chat/completions")
    async def chat_completions(request: Request):
        async with state.admitted() as place:
            body = await read_json(request, settings.body_limit)
            # Decoding media is CPU work: keep it off the event loop.
            call = await run_in_threadpool(parse_chat, body, settings.limits, settings.media, state.default_voice(),
                                           state.transcript)
            pump = state.open(call.request, place)
        first = await _first(pump, request)
        if first is None:
            return Response(status_code=CLIENT_CLOSED)
        if call.stream:
            return ClosingStreamingResponse(_chat_events(state, pump, first, call), pump,
                                            media_type="text/event-stream", headers=NO_BUFFERING)
        events = [first]
        try:
            while events[-1] is not END:
                events.append(await pump.next_unless_gone(request))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        except BaseException:
            pump.failed = True
            raise
        finally:
            pump.close()
        if not any(isinstance(e, Done) for e in events):
            raise RuntimeError("the backend's stream ended without a Done event")
        reply, audio_id = whole_reply(call, state.backend.info.model, events[:-1])
        if audio_id:
            state.remember(audio_id, reply["choices"][0]["message"]["audio"]["transcript"])
        return JSONResponse(reply)

    @api.post("/audio/speech")
    async def speech(request: Request):
        if not state.backend.info.can_speak_text:
            raise Unsupported("The model behind this server can't speak a given text (it needs the streaming engine).")
        async with state.admitted() as place:
            body = await read_json(request, settings.body_limit)
            call = parse_speech(body, settings.limits, state.default_voice())
            pump = state.open(call.request, place)
        first = await _first(pump, request)
        if first is None:
            return Response(status_code=CLIENT_CLOSED)
        if call.sse:
            events = _speech_events(pump, first, len(call.request.speak_text))
            return ClosingStreamingResponse(events, pump, media_type="text/event-stream", headers=NO_BUFFERING)
        media_type = "audio/wav" if call.audio_format == "wav" else "audio/pcm"
        return ClosingStreamingResponse(_speech_bytes(pump, first, call.audio_format), pump, media_type=media_type,
                                        headers={**NO_BUFFERING, "X-Sample-Rate": str(SPEECH_RATE)})

    app.include_router(api)
    return app


NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def model_card(state: ServerState) -> dict:
    """The model, as ``/v1/models`` lists it, with what it can do and its voices (extensions)."""
    info = state.backend.info
    return {"id": info.model, "object": "model", "created": int(state.started), "owned_by": "omni_app",
            "description": info.description, "voices": state.backend.voices(),
            "stock_voices": state.backend.stock_voices(),
            "capabilities": {"is_tiny": info.is_tiny, "engine": info.engine, "speak_text": info.can_speak_text,
                             "create_voices": info.can_create_voices, "save_voices": info.can_save_voices}}


async def _first(pump: Pump, request: Request):
    """The stream's first event, before any response is sent, so that errors raised before the
    generation starts (a bad voice, unusable input) get a proper status; ``None`` if the client left."""
    try:
        return await pump.next_unless_gone(request)
    except ClientGone:
        pump.close()
        return None
    except BaseException:
        pump.failed = True
        pump.close()
        raise


async def _chat_events(state: ServerState, pump: Pump, first, call: ChatCall):
    chunks = ChatChunks(call, state.backend.info.model)
    item = first
    try:
        while item is not END:
            for chunk in chunks.on_event(item):
                yield sse(chunk)
            item = await pump.next()
        if call.audio_format:
            state.remember(chunks.audio_id, "".join(chunks.transcript))
        yield sse("[DONE]")
    except Exception as exc:  # the response has started: the error goes out as an event
        pump.failed = True
        yield sse(error_of(exc)[1])
        yield sse("[DONE]")
    finally:
        pump.close()


async def _speech_events(pump: Pump, first, characters: int):
    item = first
    try:
        while item is not END:
            if isinstance(item, AudioChunk):
                yield sse(speech_delta(item))
            elif isinstance(item, Done):
                yield sse(speech_done(item, characters))
            item = await pump.next()
    except Exception as exc:
        pump.failed = True
        yield sse(error_of(exc)[1])
    finally:
        pump.close()


async def _speech_bytes(pump: Pump, first, audio_format: str):
    item = first
    try:
        if audio_format == "wav":
            yield wav_header(SPEECH_RATE)
        while item is not END:
            if isinstance(item, AudioChunk):
                yield pcm16(item.samples)
            item = await pump.next()
    except Exception:
        # Raw audio has no way to carry an error: the connection is cut, so the client
        # sees a truncated body instead of a short but seemingly whole recording.
        pump.failed = True
        raise
    finally:
        pump.close()

