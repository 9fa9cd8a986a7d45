"""The model's lock: granted in order of arrival, and able to tell a waiter its place.

One model serves one generation at a time. A plain lock lets a late request overtake
one that has waited for a minute; in a workshop with twenty people talking that is
unfair and unpredictable. This lock serves requests first come, first served, and each
waiter can ask how many requests are ahead of it (the one running included).
"""

from __future__ import annotations

import threading
from collections import deque


class FifoLock:
    """A lock that waiters take in arrival order. Any thread may release it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._held = False

    def join(self) -> object:
        """Take a place in the queue; returns the ticket to wait with."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
        return ticket

    def wait(self, ticket: object, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``ticket``'s turn; ``True`` once the lock is held."""
        with self._cond:
            if not self._ready(ticket):
                self._cond.wait(timeout)
            if not self._ready(ticket):
                return False
            self._queue.popleft()
            self._held = True
            return True

    def leave(self, ticket: object) -> None:
        """Give up a place without taking the lock (the request was cancelled while waiting)."""
        with self._cond:
            if ticket in self._queue:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def ahead(self, ticket: object) -> int:
        """Requests before ``ticket``: those queued earlier, plus the one holding the lock."""
        with self._cond:
            place = self._queue.index(ticket) if ticket in self._queue else 0
            return place + int(self._held)

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def locked(self) -> bool:
        return self._held

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn."""
        return len(self._queue)

    def __enter__(self) -> FifoLock:
        ticket = self.join()
        while not self.wait(ticket, 1.0):
            pass
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _ready(self, ticket: object) -> bool:
        return not self._held and bool(self._queue) and self._queue[0] is ticket
