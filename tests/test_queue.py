"""Waiting for the model: up to max_batch replies at once, the rest first come, first served, told their place."""

from __future__ import annotations

import threading

import pytest

from omni_app.api import CancelToken, Request
from omni_app.config import GenerationLimits
from omni_app.conversation import Conversation
from omni_app.engine.service import ModelService
from omni_app.engine.streaming import StreamingEngine
from omni_app.events import Done, Notice, TextDelta

SHORT = GenerationLimits(max_new_tokens=8, max_speech_seconds=0.5)
LONG = GenerationLimits(max_new_tokens=4000)


@pytest.fixture(scope="module")
def serial(service):
    """The same model, one reply at a time."""
    return ModelService(service.loaded, StreamingEngine(), max_batch=1)


@pytest.fixture(scope="module")
def pair(service):
    """The same model, two replies at once."""
    return ModelService(service.loaded, StreamingEngine(), max_batch=2)


def hold(service, text="Hold the model"):
    """A long text reply that holds a place until closed."""
    running = service.stream(Request(Conversation().add_user(text), voice=None, limits=LONG, seed=1))
    assert isinstance(next(running), TextDelta)
    return running


def test_waiters_are_told_their_place_and_served_in_order(serial):
    order, notices = [], {}
    running = hold(serial)
    ready = [threading.Event() for _ in range(3)]

    def waiter(index):
        seen = []
        for event in serial.stream(Request(Conversation().add_user(f"Q{index}"), voice=None, limits=SHORT, seed=1)):
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


def test_a_request_cancelled_while_waiting_leaves_the_queue(serial):
    running = hold(serial)
    cancel = CancelToken()
    waiting = serial.stream(Request(Conversation().add_user("Wait"), voice=None, limits=SHORT), cancel)
    assert isinstance(next(waiting), Notice) and serial.waiting == 1
    cancel.cancel()
    rest = list(waiting)
    assert isinstance(rest[-1], Done) and rest[-1].reason == "cancelled"
    assert serial.waiting == 0
    running.close()
    assert not serial.busy


def test_max_batch_replies_run_together_and_the_next_waits_its_turn(pair):
    first, second = hold(pair, "One"), hold(pair, "Two")  # both got text: both are in the batch
    assert pair.active == 2 and pair.waiting == 0
    third = pair.stream(Request(Conversation().add_user("Three"), voice=None, limits=SHORT, seed=1))
    notice = next(third)
    assert isinstance(notice, Notice) and notice.queue_position == 1 and pair.waiting == 1
    first.close()  # a place frees: the third is admitted and finishes
    rest = list(third)
    assert isinstance(rest[-1], Done) and rest[-1].reason in ("finished", "length")
    assert rest[-1].stats.queue_time > 0
    second.close()
    assert not pair.busy and pair.active == 0
