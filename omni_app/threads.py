"""CPU threads for the model: how many the model's loop uses (all cores but one), and how BLAS is
told, before torch loads.

The model runs in one thread of its own (the scheduler's loop), not the process's first
thread. There, on x86 CPUs, MKL's OpenMP threading costs 50-100 us on every small matrix
product (10 us in the first thread), which doubled the time of a decode step of the tiny
model and of every DiT evaluation. With ``MKL_NUM_THREADS=1`` in the environment when torch
loads, and the loop then setting its own thread count (:func:`use_model_threads`), a small
product costs what it does in the first thread and a large one still uses every core.
Other threads of the process (request parsing, media decoding) then compute with one
thread each, which keeps them from competing with the model for the cores.

Nothing is changed when the environment already says how many threads MKL or OpenMP
should use, or when torch was imported first (it read the environment then).
"""

from __future__ import annotations

import os
import sys

#: Where the thread count the model's loop uses is kept for this process and its children.
_THREADS = "OMNI_APP_MODEL_THREADS"


def prepare() -> None:
    """Set the environment for torch's BLAS (module docstring); call before torch is imported."""
    if "torch" in sys.modules or "MKL_NUM_THREADS" in os.environ or _THREADS in os.environ:
        return
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        threads = int(given)
    else:
        # One core is left to the rest of the process (HTTP, media decoding, the web app and
        # its microphone) and to a browser on the same machine: on 2 cores the tiny model made
        # speech as fast with one thread as with two, and a server under load answered 1.8x more
        # replies a minute with one (README, "Many people at once").
        threads = max(1, len(os.sched_getaffinity(0)) - 1)
    os.environ[_THREADS] = str(threads)
    os.environ["MKL_NUM_THREADS"] = "1"


def model_threads() -> int | None:
    """Threads the model's loop computes with (``None``: torch's own choice)."""
    value = os.environ.get(_THREADS, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def use_model_threads() -> None:
    """In the model's loop thread: compute with the threads :func:`prepare` chose."""
    threads = model_threads()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
