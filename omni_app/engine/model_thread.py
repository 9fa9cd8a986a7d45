"""The one thread of a process that computes with its models.

Every :class:`~.scheduler.Scheduler` of the process hands its turns to this thread: one
thread for all model work keeps one pool of compute threads (a second thread computing with
torch gets a pool of its own, and the two slow each other down), and two services of one
process (a benchmark's two engines) never compute at once.
"""

from __future__ import annotations

import os
import threading
import time
import weakref

from ..threads import use_model_threads


class ModelThread:
    """The thread that turns every scheduler's loop in turn (module docstring)."""

    def __init__(self) -> None:
        self._schedulers: weakref.WeakSet = weakref.WeakSet()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def serve(self, scheduler) -> None:
        """Make sure ``scheduler``'s work is turned (called when it gets a request)."""
        with self._cond:
            self._schedulers.add(scheduler)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="omni-model", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _loop(self) -> None:
        use_model_threads()
        while True:
            busy = False
            for scheduler in list(self._schedulers):
                busy = scheduler.turn() or busy
            # Let the readers run: a step of the tiny model is mostly Python, and without this the
            # threads that pass events on (to HTTP, to the page) got the interpreter only every few
            # steps, so speech made early reached the page late.
            time.sleep(0)
            if not busy:
                with self._cond:
                    if not any(s.waiting or s.active for s in self._schedulers):
                        self._cond.wait(1.0)


_THREAD: ModelThread | None = None
_THREAD_LOCK = threading.Lock()


def _forget_thread() -> None:
    """In a forked child: the parent's model thread does not exist here (and its locks may be held)."""
    global _THREAD, _THREAD_LOCK
    _THREAD, _THREAD_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_thread)


def model_thread() -> ModelThread:
    """This process's model thread (made on first use)."""
    global _THREAD
    with _THREAD_LOCK:
        if _THREAD is None:
            _THREAD = ModelThread()
        return _THREAD
