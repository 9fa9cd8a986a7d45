"""One thread owns the model: it admits requests in arrival order and advances them together.

Up to ``max_batch`` replies are made at once; the rest wait in arrival order and are told
their place. For an engine that batches (:class:`~.common.BatchEngine`) each turn of the
loop advances every admitted reply by one step; replies join and leave between steps. An
engine that does not (the reference engine, transformers' ``generate()``) runs one reply
at a time, start to end.

Flow control: every request has its own bounded :class:`Channel` to its consumer, and the
loop never waits for a consumer. A reply whose channel is full is left out of the steps
(its events wait in its outbox) until the consumer reads again; one that stays full for
``stall_seconds`` is cancelled, so a stalled HTTP client or a frozen tab never holds the
model or the batch. Cancel and a closed stream take a reply out within one step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

from ..events import Event, Notice
from .common import Cancel, EngineResult, Job
from .model_thread import model_thread

log = logging.getLogger(__name__)

#: How long a closed stream waits for the loop to let go of its reply (one step, normally).
RELEASE_SECONDS = 10.0


@dataclass(frozen=True)
class Finished:
    """The last item of a channel after success or cancel."""

    result: EngineResult


@dataclass(frozen=True)
class Failed:
    """The last item of a channel when the reply's work raised."""

    error: BaseException


class Channel:
    """Events from the loop to one consumer: at most ``size`` waiting, plus the final item."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque = deque()
        self._cond = threading.Condition()

    def offer(self, item) -> bool:
        """Add ``item`` unless the channel is full; never waits."""
        with self._cond:
            if len(self._items) >= self.size:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def close(self, items: list) -> None:
        """Add the last items, whatever the bound (they are few: one step's events and the final one)."""
        with self._cond:
            self._items.extend(items)
            self._cond.notify_all()

    def get(self, timeout: float):
        """The next item, or ``None`` after ``timeout`` seconds without one."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def wait_for_room(self, timeout: float) -> None:
        with self._cond:
            if len(self._items) >= self.size:
                self._cond.wait(timeout)


class Ticket:
    """One request from submission to its final item: waiting, then in the batch, then over."""

    def __init__(self, job: Job, prepared, cancel, channel_size: int) -> None:
        self.job, self.prepared = job, prepared
        self.channel = Channel(channel_size)
        #: Set by the consumer when it stops reading (its stream closed).
        self.closed = threading.Event()
        #: Set by the loop when a reply stayed unread past the deadline.
        self.stalled = threading.Event()
        self.stop = Cancel(cancel, self.closed, self.stalled)
        #: Set once the final item is in the channel (the model no longer holds anything of it).
        self.released = threading.Event()
        self.outbox: deque = deque()
        self.reply = None
        self.told: int | None = None
        self.admitted: float | None = None
        self._full_since: float | None = None

    def emit(self, event: Event) -> None:
        self.outbox.append(event)

    def deliver(self, now: float) -> None:
        """Move events from the outbox to the channel while there is room; note since when it is full."""
        while self.outbox and self.channel.offer(self.outbox[0]):
            self.outbox.popleft()
        self._full_since = (self._full_since or now) if self.outbox else None

    def stalled_for(self, now: float) -> float:
        return now - self._full_since if self._full_since is not None else 0.0

    def finish(self, final) -> None:
        self.channel.close([*self.outbox, final])
        self.outbox.clear()
        self.released.set()


class Scheduler:
    """The loop that owns the model (module docstring)."""

    def __init__(self, engine, loaded, max_batch: int, stall_seconds: float, channel_size: int) -> None:
        self.engine, self.loaded = engine, loaded
        self.batches = engine.batches
        self.max_batch = max_batch if self.batches else 1
        self.stall_seconds = stall_seconds
        self.channel_size = channel_size
        #: Held while the model computes; :meth:`ModelService.exclusive` takes it for other work.
        self.model_lock = threading.RLock()
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._active: list[Ticket] = []
        #: The process it belongs to (a forked child makes its own).
        self.pid = os.getpid()
        self._ready = not self.batches  # the engine's setup runs in the loop thread, with its threads

    # Consumer side ---------------------------------------------------------------

    def submit(self, job: Job, prepared, cancel) -> Ticket:
        """Queue a request; its events come through the ticket's channel."""
        ticket = Ticket(job, prepared, cancel, self.channel_size)
        with self._cond:
            self._waiting.append(ticket)
            if len(self._active) >= self.max_batch:
                self._tell_places()
            model_thread().serve(self)
            self._cond.notify_all()
        return ticket

    def withdraw(self, ticket: Ticket) -> bool:
        """Take a ticket out of the queue if it is still waiting; returns whether it was."""
        with self._cond:
            if ticket not in self._waiting:
                return False
            self._waiting.remove(ticket)
            ticket.released.set()
            self._tell_places()
            return True

    def release(self, ticket: Ticket) -> None:
        """The consumer is gone: drop the request wherever it is (a running reply stops within one step)."""
        ticket.closed.set()
        if not self.withdraw(ticket) and ticket.admitted is not None:
            with self._cond:
                self._cond.notify_all()
            if not ticket.released.wait(RELEASE_SECONDS):
                log.warning("a reply is still finishing a step after %s s; it frees its place when it returns",
                            RELEASE_SECONDS)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._active)

    # The loop ---------------------------------------------------------------------

    def turn(self) -> bool:
        """One turn of the loop: admit, then one step of the batch (or a whole reply); ``False`` when idle."""
        with self._cond:
            if not self._active and not self._waiting:
                return False
            admitted = self._admit()
        try:
            if not self._ready:
                with self.model_lock:
                    self.engine.setup(self.loaded, self.max_batch)
                self._ready = True
            for ticket in admitted:
                self._start(ticket)
            with self.model_lock:
                if self.batches:
                    self._step()
                else:
                    self._run_whole()
        except Exception as exc:  # a bug of the loop itself: every reply in it learns of it
            log.exception("the model loop failed")
            for ticket in list(self._active):
                self._end(ticket, Failed(exc))
        return True

    def _admit(self) -> list[Ticket]:
        admitted = []
        while self._waiting and len(self._active) < self.max_batch:
            ticket = self._waiting.popleft()
            ticket.admitted = time.perf_counter()
            self._active.append(ticket)
            admitted.append(ticket)
        if admitted:
            self._tell_places()
        return admitted

    def _tell_places(self) -> None:
        """Tell each waiter its place when it changed (called with the condition held)."""
        for index, ticket in enumerate(self._waiting):
            ahead = index + 1  # those before it, and the full batch
            if ahead != ticket.told:
                ticket.told = ahead
                ticket.channel.offer(Notice(f"Waiting for the model: {ahead} request{'s' if ahead != 1 else ''} "
                                            "ahead.", level="info", queue_position=ahead))

    def _start(self, ticket: Ticket) -> None:
        if ticket.stop.is_set():  # cancelled while it waited
            self._end(ticket, Finished(EngineResult("cancelled", 0, 0)))
            return
        if not self.batches:
            return
        try:
            ticket.reply = self.engine.start(self.loaded, ticket.prepared, ticket.job, ticket.emit)
        except Exception as exc:
            self._end(ticket, Failed(exc))

    def _step(self) -> None:
        now = time.perf_counter()
        runnable = []
        for ticket in list(self._active):
            reply = ticket.reply
            if reply is None:
                continue
            if ticket.stop.is_set():
                reply.cancel()
            elif ticket.stalled_for(now) > self.stall_seconds:
                log.warning("a reply's reader stopped reading for %.0f s: the reply was cancelled", self.stall_seconds)
                ticket.stalled.set()
                reply.cancel()
            elif not ticket.outbox:
                runnable.append(reply)
        if runnable:
            self.engine.iterate(self.loaded, runnable)
        now = time.perf_counter()
        for ticket in list(self._active):
            reply = ticket.reply
            if reply is None:
                continue
            if reply.error is not None:
                self._end(ticket, Failed(reply.error))
            elif reply.done:
                self._end(ticket, Finished(reply.result()))
            else:
                ticket.deliver(now)
        if not runnable and self._active:
            time.sleep(0.005)  # every reply waits for its reader: do not spin

    def _run_whole(self) -> None:
        for ticket in list(self._active):
            if ticket.stop.is_set():
                self._end(ticket, Finished(EngineResult("cancelled", 0, 0)))
                continue
            emit = _BlockingEmit(ticket, self.stall_seconds)
            try:
                result = self.engine.run(self.loaded, ticket.prepared, ticket.job, emit, ticket.stop)
            except Exception as exc:
                self._end(ticket, Failed(exc))
            else:
                self._end(ticket, Finished(result))

    def _end(self, ticket: Ticket, final) -> None:
        with self._cond:
            if ticket in self._active:
                self._active.remove(ticket)
            ticket.finish(final)
            self._cond.notify_all()


class _BlockingEmit:
    """``emit`` for an engine that runs a reply start to end: waits for room, up to the deadline."""

    def __init__(self, ticket: Ticket, stall_seconds: float) -> None:
        self.ticket, self.stall_seconds = ticket, stall_seconds

    def __call__(self, event: Event) -> None:
        ticket = self.ticket
        deadline = time.perf_counter() + self.stall_seconds
        while not ticket.channel.offer(event):
            if ticket.stop.is_set():
                return
            if time.perf_counter() > deadline:
                log.warning("a reply's reader stopped reading for %.0f s: the reply was cancelled", self.stall_seconds)
                ticket.stalled.set()
                return
            ticket.channel.wait_for_room(0.1)
