"""The bridge from a backend's blocking stream to the server's event loop."""

from __future__ import annotations

import asyncio
import threading

from omni_app.api import CancelToken
from omni_app.serve.bridge import Pump


def test_many_streams_waiting_for_the_model_do_not_starve_the_one_generating():
    # More streams than the shared thread pool has threads (40), each blocked until its turn:
    # the stream that has the model must still get its events through.
    turn = threading.Event()

    def waiting():
        turn.wait(60)
        yield "my turn"

    def generating():
        yield "speech"

    async def serve() -> str:
        waiters = [Pump(waiting(), CancelToken()) for _ in range(45)]
        pulls = [asyncio.ensure_future(pump.next()) for pump in waiters]
        try:
            await asyncio.sleep(0.5)
            return await asyncio.wait_for(Pump(generating(), CancelToken()).next(), 20)
        finally:
            turn.set()
            await asyncio.gather(*pulls)

    assert asyncio.run(serve()) == "speech"
