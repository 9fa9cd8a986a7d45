"""Waiting for the model: first come, first served, and each waiter is told its place."""

from __future__ import annotations

import threading

from omni_app.api import CancelToken, Request
from omni_app.config import GenerationLimits
from omni_app.conversation import Conversation
from omni_app.engine.fifo import FifoLock
from omni_app.events import Done, Notice, TextDelta

SHORT = GenerationLimits(max_new_tokens=8, max_speech_seconds=0.5)


def test_the_lock_is_taken_in_arrival_order_and_knows_places():
    lock = FifoLock()
    first, second, third = lock.join(), lock.join(), lock.join()
    assert not lock.wait(second, 0.01)  # the first in line goes first
    assert lock.wait(first, 0.01) and lock.locked()
    assert lock.ahead(second) == 1 and lock.ahead(third) == 2
    lock.leave(second)  # cancelled while waiting
    assert lock.ahead(third) == 1 and lock.waiting == 1
    assert not lock.wait(third, 0.01)
    lock.release()
    assert lock.wait(third, 0.01)
    lock.release()
    assert not lock.locked() and lock.waiting == 0


def test_waiters_are_told_their_place_and_served_in_order(service):
    order, notices = [], {}
    running = service.stream(Request(Conversation().add_user("Hold the model"), voice=None,
                                     limits=GenerationLimits(max_new_tokens=4000), seed=1))
    assert isinstance(next(running), TextDelta)  # the model is busy from here on
    ready = [threading.Event() for _ in range(3)]

    def waiter(index):
        seen = []
        for event in service.stream(Request(Conversation().add_user(f"Q{index}"), voice=None, limits=SHORT, seed=1)):
            if isinstance(event, Notice) and event.queue_position is not None:
                seen.append(event.queue_position)
                ready[index].set()
            if isinstance(event, Done):
                order.append(index)
        notices[index] = seen

    threads = []
    for index in range(3):  # one after another, so arrival order is known
        threads.append(threading.Thread(target=waiter, args=(index,)))
        threads[-1].start()
        assert ready[index].wait(30)
    running.close()
    for thread in threads:
        thread.join(120)
    assert order == [0, 1, 2]
    assert notices[0][0] == 1 and notices[1][0] == 2 and notices[2][0] == 3
    assert notices[2] == sorted(notices[2], reverse=True) and notices[2][-1] == 1  # the place counts down


def test_a_request_cancelled_while_waiting_leaves_the_queue(service):
    running = service.stream(Request(Conversation().add_user("Hold"), voice=None,
                                     limits=GenerationLimits(max_new_tokens=4000), seed=1))
    next(running)
    cancel = CancelToken()
    waiting = service.stream(Request(Conversation().add_user("Wait"), voice=None, limits=SHORT), cancel)
    assert isinstance(next(waiting), Notice) and service.waiting == 1
    cancel.cancel()
    rest = list(waiting)
    assert isinstance(rest[-1], Done) and rest[-1].reason == "cancelled"
    assert service.waiting == 0
    running.close()
    assert not service.busy
