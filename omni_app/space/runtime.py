"""The app of a built Space: read the Spacefile beside it, load the model, serve its tabs.

Spaces start it as ``python app.py`` with ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` set,
which gradio reads itself. On ZeroGPU the model is placed on ``cuda`` here, at start, while
ZeroGPU's CUDA emulation records it; only the generator runs on a real GPU, per request.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .. import zerogpu
from ..errors import OmniError
from .spacefile import Spacefile, load_spacefile


def open_space_backend(spacefile: Spacefile):
    """The model the Spacefile names, in this process (a :class:`~omni_app.engine.local.LocalBackend`)."""
    from ..config import ServiceConfig
    from ..engine.local import LocalBackend

    print(f"omni_app: loading {spacefile.checkpoint} on {spacefile.hardware} ...", flush=True)
    # On a GPU of the Space's own, the replies generated at once are one batch of the model;
    # on ZeroGPU each is a GPU call of its own (a worker makes one reply).
    batch = 1 if spacefile.is_zero_gpu else spacefile.limits.concurrency
    config = ServiceConfig(model=spacefile.checkpoint, media=spacefile.media_limits(), max_batch=batch)
    backend = LocalBackend.from_config(config, gpu=spacefile.gpu_budget())
    if backend.info.is_tiny:
        print("omni_app: the tiny test model is loaded: its replies are random noise.", flush=True)
    backend.warmup()  # nothing on ZeroGPU, where no GPU exists outside a request
    return backend


def main(spacefile_path: str | Path) -> int:
    """Start the Space's web app; returns an exit status (2 with one line on a bad Spacefile or model)."""
    zerogpu.prepare()  # before torch is touched: ZeroGPU patches it
    from ..cli import quiet_libraries

    quiet_libraries()
    logging.getLogger("omni_app").setLevel(logging.INFO)
    try:
        spacefile = load_spacefile(spacefile_path)
        backend = open_space_backend(spacefile)
    except OmniError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ..ui.launch import serve_page

    # Visitors beyond the concurrency wait in gradio's queue and see their place in it. The
    # host and port come from GRADIO_SERVER_NAME/PORT, which the Space sets.
    serve_page(backend, spacefile.generation_limits(), spacefile.media_limits(), tabs=spacefile.tabs,
               concurrency=spacefile.limits.concurrency, queue_size=spacefile.limits.queue_size)
    return 0
