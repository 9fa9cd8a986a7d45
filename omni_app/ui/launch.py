"""Serving the page: the one launch sequence of ``app.py`` and of a built Space."""

from __future__ import annotations

import signal
import sys

from ..api import Backend
from ..config import GenerationLimits, MediaLimits
from ..vad import VadOptions


def prepare_first_event() -> None:
    """Do now, before serving, what gradio does on the first event it runs.

    Gradio wraps every event in a switch to matplotlib's off-screen backend; the first one
    imports matplotlib and resolves its backend on the server's event loop, which then
    serves no page for 0.4-1.2 s: the first person to speak waited that much longer for
    their turn to arrive. Choosing the backend here leaves nothing for that first event.
    """
    try:
        import matplotlib
    except ImportError:  # gradio then skips the switch too
        return
    matplotlib.use("agg")
    matplotlib.get_backend()


def serve_page(backend: Backend, limits: GenerationLimits, media: MediaLimits, *, tabs, concurrency: int,
               queue_size: int, vad: VadOptions = VadOptions(), **launch) -> None:
    """Build the page over ``backend`` and serve it until the process ends.

    ``concurrency`` replies are asked for at once; ``queue_size`` more wait in gradio's queue,
    each told its place. ``launch`` goes to gradio's ``launch`` (host, port, share). However
    the process ends (a plain ``kill`` included) the speech files it wrote are removed.
    """
    from .app import CSS, build_app
    from .context import AppContext
    from .player import page_head

    context = AppContext(backend, limits, media, vad)
    demo = build_app(context, tabs=tabs, concurrency=concurrency)
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    prepare_first_event()
    # A plain `kill` ends the app through the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        demo.launch(css=CSS, head=page_head(), **launch)
    finally:
        context.speech.close()
