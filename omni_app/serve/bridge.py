"""From a backend's blocking event stream to the event loop, and back out when the client leaves.

A backend's ``stream()`` is a plain generator that blocks (on the model, or on the queue
for it). :class:`Pump` pulls its events one at a time in worker threads, so the event
loop stays free. Starlette does not close a *sync* generator when a client disconnects,
so the pump owns that: :meth:`Pump.close` sets the request's cancel token (the backend
stops within one step, or leaves the queue) and then closes the generator in a thread of
its own, once the pull still running has returned. The model is free for the next
request as soon as that is done.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator

import anyio
import anyio.to_thread

from ..api import CancelToken

log = logging.getLogger(__name__)

#: What :meth:`Pump.next` returns after the last event.
END = object()
#: How often a request that waits for its next event checks whether its client has gone.
DISCONNECT_POLL_SECONDS = 0.2
#: How long closing a stream waits for its pull in flight (a cancelled backend stops within one step).
CLOSE_DEADLINE_SECONDS = 30.0


class ClientGone(Exception):
    """The client disconnected while its request was waiting."""


class Pump:
    """One backend stream, pulled from async code. Always :meth:`close` it (it is idempotent)."""

    def __init__(self, events: Iterator, cancel: CancelToken,
                 on_closed: Callable[[Pump], None] | None = None) -> None:
        self._events = events
        self.cancel = cancel
        self._pulling = threading.Lock()
        self._closing = threading.Lock()
        self._closed = False
        self._close_started = False
        self._on_closed = on_closed
        #: Whether the stream ran to its end (``False``: it was cut short).
        self.finished = False
        #: Set by the caller when the stream raised (for the server's counts).
        self.failed = False
        # A thread of its own for this stream's pulls. The shared default pool has 40: with
        # more streams waiting in the model's queue (each pull blocks until its turn), the
        # one generating could not get a thread to hand on its events, and nothing would move.
        self._limiter = anyio.CapacityLimiter(1)

    def _pull(self):
        with self._pulling:
            if self._closed:
                return END
            try:
                return next(self._events)
            except StopIteration:
                self.finished = True
                return END

    async def next(self):
        """The next event, or :data:`END`. Cancelling the caller abandons the pull (see :meth:`close`)."""
        return await anyio.to_thread.run_sync(self._pull, abandon_on_cancel=True, limiter=self._limiter)

    async def next_unless_gone(self, request) -> object:
        """Like :meth:`next`, but raises :class:`ClientGone` when ``request``'s client disconnects.

        Used before a response has started (waiting in the queue, or for a whole reply),
        where nothing else notices a client that left.
        """
        task = asyncio.ensure_future(self.next())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    raise ClientGone()
        finally:
            if not task.done():
                task.cancel()

    def close(self) -> None:
        """Stop the generation and free the model; returns at once, the rest happens in a thread."""
        self.cancel.cancel()
        with self._closing:
            if self._close_started:
                return
            self._close_started = True
        threading.Thread(target=self._close, name="omni-close-stream", daemon=True).start()

    def _close(self) -> None:
        # Waits for a pull in flight: with the token set it returns within one engine step.
        self._closed = True
        if self._pulling.acquire(timeout=CLOSE_DEADLINE_SECONDS):
            try:
                self._events.close()
            except Exception:  # the stream is over either way; say why it did not end cleanly
                log.exception("closing a backend stream failed")
            finally:
                self._pulling.release()
        else:
            # A backend that ignores its cancel token: the request is let go here all the same
            # (its next pull ends the stream), and the log says which backend to look at.
            log.error("a backend stream did not stop within %.0f s of being cancelled; letting it go",
                      CLOSE_DEADLINE_SECONDS)
        if self._on_closed is not None:
            self._on_closed(self)
