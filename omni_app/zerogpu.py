"""Hugging Face ZeroGPU support behind one function; a no-op everywhere else."""

from __future__ import annotations

from collections.abc import Callable


def on_gpu(fn: Callable, duration: int = 120) -> Callable:
    """Wrap the generator that runs the model so ZeroGPU lends a GPU for each call.

    Off Spaces, ``spaces.GPU`` returns the function itself; without the package, so do we.
    Only this generator is wrapped: decoding, voice detection and formatting stay on the CPU.
    """
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
