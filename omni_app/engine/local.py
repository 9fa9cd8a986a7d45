"""The model in this process behind the :class:`~omni_app.api.Backend` seam.

:class:`LocalBackend` owns a :class:`~.service.ModelService` (one loaded model, one
generation at a time) and answers everything the app asks in plain data. On Hugging Face
ZeroGPU only the generator runs on the lent GPU, in another process: its arguments and
every event it yields are pickled, so it gets the voice itself rather than a name, and
Stop closes it instead of sharing an event across the boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..api import BackendInfo, CancelToken, Request
from ..config import MediaLimits, ServiceConfig
from ..conversation import Conversation
from ..errors import RequestError
from ..events import Event, Trace
from ..inside import Inspection
from ..voices import Voice, save_voice, voice_from_reference
from ..zerogpu import on_gpu
from .service import ModelService

log = logging.getLogger(__name__)


class LocalBackend:
    """A loaded model in this process, as a :class:`~omni_app.api.Backend`."""

    def __init__(self, service: ModelService, voices_dir: Path | None = None,
                 media: MediaLimits = MediaLimits()) -> None:
        self.service = service
        #: Where created voices are saved when asked to (``None``: nowhere).
        self.voices_dir = voices_dir
        self.media = media
        generate = self._generate
        self._on_gpu = on_gpu(generate)
        #: Off ZeroGPU the wrapper is the function itself and runs in this process.
        self._in_process = self._on_gpu is generate

    @classmethod
    def from_config(cls, config: ServiceConfig, voices_dir: Path | None = None) -> LocalBackend:
        """Load the model named in ``config``; voices are saved in ``voices_dir`` (see :meth:`load_voices`)."""
        return cls(ModelService.from_config(config), voices_dir)

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
            can_save_voices=self.voices_dir is not None,
            description=f"{loaded.name} on {loaded.device} ({dtype}), {self.service.engine.name} engine",
        )

    def voices(self) -> list[str]:
        return self.service.voices

    def stock_voices(self) -> list[str]:
        return self.service.stock_voices

    def warmup(self) -> None:
        """One short generation, so the first user does not pay for lazy initialisation."""
        self.service.warmup()

    def stream(self, request: Request, cancel: CancelToken | None = None) -> Iterator[Event]:
        voice = self.service.voice(request.voice) if request.voice is not None else None
        if self._in_process:
            yield from self.service.stream(request, cancel, voice)
            return
        # ZeroGPU: the generator runs in another process; a CancelToken can't cross, so the
        # stream is closed on cancel (the worker then stops within one step). Nothing is kept
        # per conversation there (each call may land in a fresh process).
        events = self._on_gpu(replace(request, session=None), voice)
        try:
            for event in events:
                yield event
                if cancel is not None and cancel.is_set():
                    break
        finally:
            events.close()

    def _generate(self, request: Request, voice: Voice | None):
        # The one function that needs the GPU (ZeroGPU wraps exactly this).
        yield from self.service.stream(request, None, voice)

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
                raise RequestError(f"The voice was made but could not be saved: {exc}") from exc
            self.service.add_voices([voice])
            return voice.name
        return self.service.add_custom_voice(voice)

    def end_session(self, session: str) -> None:
        self.service.end_session(session)

    def inspect(self, conversation: Conversation, trace: Trace | None) -> Inspection:
        from .inspect import inspect

        with self.service.exclusive():
            return inspect(self.service.loaded, conversation, trace)
