"""Hugging Face ZeroGPU behind one small shim; everywhere else the generator runs in this process.

On a ZeroGPU Space (``SPACES_ZERO_GPU`` is set) a GPU exists only inside functions wrapped
with ``spaces.GPU``, and ZeroGPU runs them in a forked worker process: every argument and
every yielded item is pickled, the parent learns of a worker's exception only by its class
name, and a ``threading.Event`` can't cross. :class:`GpuRunner` keeps that boundary out of
the rest of the app:

- the GPU time asked for is sized per request (:class:`GpuBudget`), within a cap;
- Stop reaches the worker through flags in shared memory that the forked worker inherits,
  so the engine ends its stream with ``Done("cancelled")`` within one step, as it does in
  this process;
- an exception in the worker comes back as itself (an :class:`~omni_app.errors.OmniError`
  keeps its message), and ZeroGPU's own refusals (quota spent, no GPU free, worker died)
  become a :class:`~omni_app.errors.GpuUnavailable` a visitor can act on.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import pickle
import re
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .conversation import AudioPart, ImagePart, VideoPart
from .errors import GpuUnavailable, OmniError

log = logging.getLogger(__name__)

#: ZeroGPU's GPU sizes: half a card (48 GB, the default) or a whole one (96 GB, twice the quota).
GPU_SIZES = ("large", "xlarge")
#: How long ending a call waits for ZeroGPU's worker to finish it (a cancelled reply stops within a step).
CLOSE_DEADLINE_SECONDS = 30.0


def active() -> bool:
    """Whether this process runs on a ZeroGPU Space (the variable the ``spaces`` package reads)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def prepare() -> None:
    """On ZeroGPU, import ``spaces`` now: it must patch torch before anything touches CUDA."""
    if active():
        import spaces  # noqa: F401


@dataclass(frozen=True)
class GpuBudget:
    """How many seconds of ZeroGPU time a reply asks for: an upper estimate, within ``cap``.

    ZeroGPU charges the time a call really took; the duration asked for only has to cover
    it (a call that runs over may be aborted), and shorter asks get served sooner. The
    rates are deliberately generous estimates for the 7B model on ZeroGPU's half card.
    """

    #: Most seconds one reply may ask for (the Spacefile's ``zero_gpu.gpu_seconds``).
    cap: int = 120
    #: ``large`` or ``xlarge`` (see :data:`GPU_SIZES`).
    size: str = "large"
    #: A fresh worker: CUDA start, the weights copied onto the GPU, the first prefill.
    base: float = 10.0
    #: Per second of audio or video in the conversation (encoders, longer prefill).
    per_media_second: float = 0.3
    #: Per image in the conversation.
    per_image: float = 1.0
    #: Per text token of the reply (a Thinker step).
    per_token: float = 0.03
    #: Per second of speech: 50 Talker steps plus the speech decoder's windows.
    per_speech_second: float = 1.0

    def __post_init__(self) -> None:
        if self.size not in GPU_SIZES:
            raise ValueError(f"size must be one of {', '.join(GPU_SIZES)}, not {self.size!r}")
        if self.cap < 1:
            raise ValueError("cap must be at least 1 second")

    def seconds_for(self, request) -> int:
        """The GPU seconds to ask for ``request`` (a :class:`~omni_app.api.Request`)."""
        media = images = 0.0
        for turn in request.conversation.turns:
            for part in turn.parts:
                if isinstance(part, AudioPart):
                    media += part.seconds
                elif isinstance(part, VideoPart):
                    media += part.clip.seconds
                elif isinstance(part, ImagePart):
                    images += 1
        limits = request.limits
        if request.speak_text is not None:
            # Read aloud sentence by sentence: about 3 characters per token, 12 per second.
            tokens = len(request.speak_text) / 3
            speech = len(request.speak_text) / 12
        else:
            tokens = limits.max_new_tokens
            speech = longest_speech(limits) if request.voice is not None else 0.0
        return int(min(self.cap, math.ceil(self.estimate(media, images, tokens, speech))))

    def estimate(self, media_seconds: float, images: float, tokens: float, speech_seconds: float) -> float:
        """GPU seconds for that much input and output, without the cap."""
        return (self.base + media_seconds * self.per_media_second + images * self.per_image
                + tokens * self.per_token + speech_seconds * self.per_speech_second)


def longest_speech(limits) -> float:
    """The most speech a reply within ``limits`` (a GenerationLimits) is expected to have."""
    # Speech runs about 0.3 s per text token; 0.5 leaves room for slow talkers.
    return min(limits.max_speech_seconds, 0.5 * limits.max_new_tokens)


@dataclass(frozen=True)
class GpuFailure:
    """An exception raised in the GPU worker, carried back as a yielded item."""

    error: BaseException
    #: The worker's traceback, for the log (an exception loses its own when pickled).
    details: str

    @classmethod
    def of(cls, exc: BaseException) -> GpuFailure:
        details = "".join(traceback.format_exception(exc))
        try:
            # Both ways: one that pickles but can't be rebuilt (an __init__ with more arguments)
            # would break the reader on the other side, and the visitor would wait for nothing.
            pickle.loads(pickle.dumps(exc))
        except Exception:  # an exception that can't travel still comes back by name and message
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        return cls(exc, details)


class CancelFlags:
    """One byte per running stream in memory shared with every worker forked after it was made."""

    def __init__(self, size: int = 64) -> None:
        # A fork context: the flags reach ZeroGPU's worker by inheritance, never by pickling.
        self._flags = multiprocessing.get_context("fork").RawArray("b", size)
        self._free = list(range(size))
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """A cleared flag for a new stream (``None`` when all are in use: Stop then closes the call)."""
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
        self._flags[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def set(self, slot: int) -> None:
        self._flags[slot] = 1

    def is_set(self, slot: int) -> bool:
        return bool(self._flags[slot])


class _FlagToken:
    """What the worker-side engine checks: a :class:`~omni_app.api.CancelToken` look-alike."""

    def __init__(self, flags: CancelFlags, slot: int) -> None:
        self._flags, self._slot = flags, slot

    def is_set(self) -> bool:
        return self._flags.is_set(self._slot)


class GpuRunner:
    """Runs the generator function ``fn(*args, cancel=...)`` where the GPU is.

    Off ZeroGPU it is simply called here. On ZeroGPU it runs under ``spaces.GPU`` with the
    duration ``duration(*args)`` (seconds), in ZeroGPU's worker process.
    """

    def __init__(self, fn: Callable[..., Iterator], duration: Callable[..., int], size: str = "large") -> None:
        self.fn = fn
        self.duration = duration
        #: Off ZeroGPU the generator runs in this process and gets the caller's CancelToken.
        self.in_process = not active()
        if not self.in_process:
            import spaces

            self._flags = CancelFlags()
            self._remote = spaces.GPU(duration=self._seconds, size=size)(self._run_remote)

    def stream(self, *args, cancel=None) -> Iterator:
        """The items ``fn`` yields; an exception in ``fn`` is raised here, wherever it ran."""
        if self.in_process:
            yield from self.fn(*args, cancel=cancel)
            return
        slot = self._flags.take()
        finished = threading.Event()
        if cancel is not None and slot is not None:
            threading.Thread(target=self._forward_cancel, args=(cancel, slot, finished), daemon=True,
                             name="omni-zerogpu-cancel").start()
        items = self._remote(*args, slot)
        try:
            for item in items:
                if isinstance(item, GpuFailure):
                    if not isinstance(item.error, OmniError):
                        log.error("the GPU worker failed:\n%s", item.details)
                    raise item.error
                yield item
                if slot is None and cancel is not None and cancel.is_set():
                    break  # no flag to tell the worker: closing the call stops it
        except Exception as exc:
            translated = zerogpu_error(exc)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            finished.set()
            if slot is not None:
                self._flags.set(slot)  # a consumer that went away stops the worker within one step too
            self._close(items, slot)

    def _close(self, items, slot: int | None) -> None:
        """Close the worker's call (it returns once the worker has finished it), within a deadline:
        a worker that hangs must not hold the visitor's request; its flag is freed when it ends."""

        def close() -> None:
            try:
                items.close()
            except Exception:  # the call is over either way
                log.exception("closing the GPU worker's call failed")
            if slot is not None:
                self._flags.release(slot)

        closer = threading.Thread(target=close, name="omni-zerogpu-close", daemon=True)
        closer.start()
        closer.join(CLOSE_DEADLINE_SECONDS)
        if closer.is_alive():
            log.error("the GPU worker's call did not end within %.0f s; letting it go", CLOSE_DEADLINE_SECONDS)

    def _seconds(self, *args) -> int:
        # spaces.GPU calls this with the worker function's arguments: (*args, slot).
        return self.duration(*args[:-1])

    def _run_remote(self, *args) -> Iterator:
        # Runs in ZeroGPU's worker process, on the forked copy of this object.
        *call, slot = args
        cancel = _FlagToken(self._flags, slot) if slot is not None else None
        try:
            yield from self.fn(*call, cancel=cancel)
        except Exception as exc:
            yield GpuFailure.of(exc)

    def _forward_cancel(self, cancel, slot: int, finished: threading.Event) -> None:
        while not finished.wait(0.05):
            if cancel.is_set():
                self._flags.set(slot)
                return


def zerogpu_error(exc: BaseException) -> BaseException:
    """The error a visitor sees for one of ZeroGPU's refusals (a ``gr.Error`` titled ``ZeroGPU ...``).

    Anything else is returned as it is.
    """
    title = getattr(exc, "title", None)
    if not isinstance(title, str) or not title.startswith("ZeroGPU"):
        return exc
    raw = str(getattr(exc, "message", "") or "").strip()
    # The spaces package's hint about cached examples does not apply here: this app caches none.
    message = " ".join(s for s in re.split(r"(?<=\.)\s+", raw) if "outside of examples" not in s).strip()
    if title == "ZeroGPU quota exceeded":
        text = f"The GPU time available to you on this Space has run out for now. {message}"
        if "Try again" not in message:
            text += " Try again later; signed-in Hugging Face users get more GPU time."
    elif title == "ZeroGPU illegal duration":
        text = (f"This reply would need more GPU time than ZeroGPU grants one request ({message}). "
                "Ask for a shorter reply, or lower zero_gpu.gpu_seconds in the Spacefile.")
    elif title in ("ZeroGPU queue timeout", "ZeroGPU client error"):
        text = f"No GPU became free in time ({message}): the Space is busy. Try again in a minute."
    elif title == "ZeroGPU worker error":
        text = (f"The GPU worker stopped before the reply was finished ({message}). Try again; if it keeps "
                "happening, the request may need more GPU memory or time than ZeroGPU gives.")
    else:
        text = f"{title}: {message}"
    return GpuUnavailable(text.strip())
