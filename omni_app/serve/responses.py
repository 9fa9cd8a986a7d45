"""HTTP plumbing of the server: errors as OpenAI JSON, bounded JSON bodies, server-sent events.

Every error a client sees is ``{"error": {"message", "type", "param", "code"}}`` with a
4xx status for what the client can fix; unexpected failures are logged with their
traceback here and reach the client as one line, and the server keeps serving.
"""

from __future__ import annotations

import json
import logging

import anyio
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse

from ..errors import BackendUnavailable, ModelLoadError, OmniError, Unsupported, unexpected
from .parts import WireError
from .replies import error_body

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An HTTP error with OpenAI's error fields (for what is not an :class:`OmniError`)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code


def error_of(exc: BaseException) -> tuple[int, dict]:
    """The status and OpenAI error body for any exception (unexpected ones are logged)."""
    if isinstance(exc, ApiError):
        return exc.status, error_body(str(exc), exc.kind, exc.param, exc.code)
    if isinstance(exc, WireError):
        return 400, error_body(str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, Unsupported):
        return 400, error_body(str(exc), code="unsupported")
    if isinstance(exc, BackendUnavailable):
        return 503, error_body(str(exc), "server_error", code="backend_unavailable")
    if isinstance(exc, ModelLoadError):
        return 500, error_body(str(exc), "server_error")
    if isinstance(exc, OmniError):
        return 400, error_body(str(exc))
    return 500, error_body(unexpected(exc, "a request", log), "server_error")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure in OpenAI's error shape."""

    async def known(_request, exc: Exception) -> JSONResponse:
        status, body = error_of(exc)
        return JSONResponse(body, status_code=status)

    async def http_error(request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"There is no {request.url.path} here; the API is under /v1 (GET /v1/models lists the model)."
        else:
            message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(message, code=str(exc.status_code)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def invalid(_request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(error_body(f"{where}: {first.get('msg', 'invalid request')}", param=where or None),
                            status_code=400)

    app.add_exception_handler(ApiError, known)
    app.add_exception_handler(OmniError, known)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, known)


async def read_json(request, limit: int) -> dict:
    """The request's JSON object, refusing bodies over ``limit`` bytes (413) before reading them whole."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large(limit)
    try:
        # A large body takes a while to parse: not on the event loop, where every stream waits.
        data = await run_in_threadpool(json.loads, bytes(body))
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ApiError(400, f"The request body is not valid JSON{where}.") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return data


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"The request is larger than this server accepts ({limit / 1e6:.0f} MB); send shorter or "
                         "smaller media.", code="request_too_large")


def sse(data: dict | str) -> str:
    """One server-sent event carrying ``data`` (JSON, or a literal such as ``[DONE]``)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n"


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always closes its body iterator and its stream, however the client left.

    Depending on the server's ASGI version a disconnect either cancels the body (ASGI
    2.3) or surfaces as a failed send (2.4); in both cases the generation must stop now,
    not whenever the iterator is garbage-collected. Closing an iterator that never started
    does not run its ``finally``, so the stream (``pump``) is closed here as well.
    """

    def __init__(self, content, pump, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._pump = pump

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
            self._pump.close()
