"""The model in this process behind the :class:`~omni_app.api.Backend` seam.

:class:`LocalBackend` owns a :class:`~.service.ModelService` (one loaded model, one
generation at a time) and answers everything the app asks in plain data. On Hugging Face
ZeroGPU only the generator runs on the lent GPU, in another process (see
:mod:`omni_app.zerogpu`): its arguments and every event it yields are pickled, so it gets
the voice itself rather than a name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..api import BackendInfo, BackendStatus, CancelToken, Request
from ..config import MediaLimits, ServiceConfig
from ..conversation import Conversation
from ..errors import RequestError, hidden
from ..events import Event, StreamClock, Trace
from ..inside import Inspection
from ..voices import Voice, save_voice, voice_from_reference
from ..zerogpu import GpuBudget, GpuRunner
from .service import ModelService

log = logging.getLogger(__name__)


class LocalBackend:
    """A loaded model in this process, as a :class:`~omni_app.api.Backend`."""

    def __init__(self, service: ModelService, voices_dir: Path | None = None,
                 media: MediaLimits = MediaLimits(), gpu: GpuBudget = GpuBudget()) -> None:
        self.service = service
        #: Where created voices are saved when asked to (``None``: nowhere).
        self.voices_dir = voices_dir
        self.media = media
        #: The one generator that needs the GPU; on ZeroGPU it runs in ZeroGPU's worker,
        #: asking for the GPU time ``gpu`` sizes from each request.
        self._gpu = GpuRunner(self._generate, duration=lambda request, voice: gpu.seconds_for(request),
                              size=gpu.size)

    @classmethod
    def from_config(cls, config: ServiceConfig, voices_dir: Path | None = None,
                    gpu: GpuBudget = GpuBudget()) -> LocalBackend:
        """Load the model named in ``config``; voices are saved in ``voices_dir`` (see :meth:`load_voices`)."""
        return cls(ModelService.from_config(config), voices_dir, config.media, gpu=gpu)

    def load_voices(self) -> list[str]:
        """Load the voices saved in the voices folder; returns one message per file skipped."""
        from ..voices import load_voice_folder

        if self.voices_dir is None:
            return []
        voices, problems = load_voice_folder(self.voices_dir)
        self.service.add_voices(voices)
        return problems

    @property
    def info(self) -> BackendInfo:
        loaded = self.service.loaded
        dtype = str(loaded.dtype).replace("torch.", "")
        return BackendInfo(
            model=loaded.name, is_tiny=loaded.is_tiny, can_inspect=True,
            can_speak_text=self.service.engine.speaks_text, can_create_voices=True,
            can_save_voices=self.voices_dir is not None, engine=self.service.engine.name,
            max_batch=self.service.batch_limit,
            description=f"{loaded.name} on {loaded.device} ({dtype}), {self.service.engine.name} engine",
        )

    def voices(self) -> list[str]:
        return self.service.voices

    def stock_voices(self) -> list[str]:
        return self.service.stock_voices

    def status(self) -> BackendStatus:
        return BackendStatus(busy=self.service.busy, waiting=self.service.waiting)

    def warmup(self) -> None:
        """One short generation, so the first user does not pay for lazy initialisation.

        Not on ZeroGPU: there is no GPU outside a visitor's request, and warming a worker
        would spend GPU time on nobody.
        """
        if self._gpu.in_process:
            self.service.warmup()

    def stream(self, request: Request, cancel: CancelToken | None = None) -> Iterator[Event]:
        voice = self.service.voice(request.voice) if request.voice is not None else None
        if self._gpu.in_process:
            yield from self._gpu.stream(request, voice, cancel=cancel)
            return
        # Each ZeroGPU call may land in a fresh worker process: nothing is kept per conversation.
        # Times count from here, the wait for a GPU included, as for every other backend.
        clock = StreamClock("gpu_worker", self.service.engine.name)
        for event in self._gpu.stream(replace(request, session=None), voice, cancel=cancel):
            yield clock.seen(event)
        if not clock.done and cancel is not None and cancel.is_set():  # stopped before the worker could say so
            yield clock.cut_short()

    def _generate(self, request: Request, voice: Voice | None, cancel=None):
        # The one function that needs the GPU (on ZeroGPU it runs in ZeroGPU's worker).
        yield from self.service.stream(request, cancel, voice)

    def create_voice(self, name: str, reference_16k: np.ndarray, base: str, save: bool = False) -> str:
        if base not in self.service.stock_voices:
            raise RequestError(f"The base voice must be one of {', '.join(self.service.stock_voices)}.")
        if name.strip() in self.service.stock_voices:
            raise RequestError(f"{name.strip()!r} is a stock voice; choose another name.")
        voice = voice_from_reference(name.strip(), reference_16k, self.service.voice(base), self.media)
        if save:
            if self.voices_dir is None:
                raise RequestError("There is no voices folder to save to (start the app with --voices-dir).")
            try:
                save_voice(voice, self.voices_dir)
            except OSError as exc:
                raise hidden(RequestError, "The voice was made but could not be saved in the voices folder.", exc,
                             log) from exc
            self.service.add_voices([voice])
            return voice.name
        return self.service.add_custom_voice(voice)

    def end_session(self, session: str) -> None:
        self.service.end_session(session)

    def voice_data(self, voice_id: str) -> Voice:
        """The voice a request names ``voice_id`` (to carry it to another copy of the model)."""
        return self.service.voice(voice_id)

    def adopt_voice(self, voice_id: str, voice: Voice) -> None:
        """Make a voice made by another copy of the model speakable here under ``voice_id``."""
        if voice_id == voice.name:  # a saved voice goes by its name
            self.service.add_voices([voice])
        elif self.service.add_custom_voice(voice) != voice_id:
            # Ids are "name#fingerprint" of the voice's data: the same voice always gets the same id.
            raise RequestError(f"The voice {voice_id!r} arrived with different data; make it again.")

    def inspect(self, conversation: Conversation, trace: Trace | None) -> Inspection:
        from .inspect import inspect

        # Inspection reads configs and runs the processor, no weights. On ZeroGPU generations run
        # in forked workers, so the model lock is not taken here: a worker forked while this
        # process held it would inherit it locked.
        with self.service.exclusive() if self._gpu.in_process else nullcontext():
            return inspect(self.service.loaded, conversation, trace)
