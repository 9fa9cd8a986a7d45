"""The one seam between the app and a model: what to ask, how to stop, what comes back.

The web app and the command line talk to a :class:`Backend` and nothing else. The model
in this process (:class:`omni_app.engine.local.LocalBackend`), a remote OpenAI-compatible
server (:class:`omni_app.serve.remote.RemoteBackend`) and a Ray Serve deployment behind
one URL all sit behind it. Everything that crosses the seam is plain data: a
:class:`Request` in; :mod:`omni_app.events` out; voices and inspections as numpy arrays
and lists, never model objects. Importing this module imports neither torch nor gradio.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .config import DEFAULT_VOICE, GenerationLimits
from .conversation import Conversation
from .events import Event, Trace

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .inside import Inspection


@dataclass(frozen=True)
class Request:
    """One reply to generate."""

    conversation: Conversation = field(default_factory=Conversation)
    #: A voice name or id from :meth:`Backend.voices` / :meth:`Backend.create_voice`;
    #: ``None`` for a text-only reply.
    voice: str | None = DEFAULT_VOICE
    limits: GenerationLimits = GenerationLimits()
    #: Fixes the sampling of the speech; ``None`` picks a random seed (reported in stats).
    seed: int | None = None
    #: Sample speech codes as the model card recommends (top-k 40, top-p 0.8, T 0.9);
    #: ``False`` decodes them greedily (repeatable without a seed; used for comparisons).
    speech_sampling: bool = True
    #: Exact-text speech: speak these words (the conversation is not used).
    speak_text: str | None = None
    #: The conversation this request continues (a browser session, an API user). A backend
    #: may keep per-session state under it; ``None`` keeps nothing.
    session: str | None = None


class CancelToken:
    """Set by whoever wants a stream to stop (Stop, barge-in, a closed connection).

    A backend checks it between steps and ends its stream with ``Done("cancelled")``
    within one audio chunk.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


class VoiceList:
    """The voices a model elsewhere offers (a server, the replicas), asked again at most every
    ``ttl`` seconds. When asking fails the last known list stands: the stock voices in it are
    still right (the detail goes to the log)."""

    def __init__(self, fetch: Callable[[], list[str]], names: list[str], where: str, ttl: float = 10.0) -> None:
        self._fetch = fetch
        self._where = where
        self.ttl = ttl
        self._known = (time.monotonic(), list(names))
        self._lock = threading.Lock()

    def get(self) -> list[str]:
        with self._lock:
            checked, names = self._known
        if time.monotonic() - checked > self.ttl:
            try:
                names = list(self._fetch())
            except Exception as exc:  # noqa: BLE001 - any failure leaves the last known list
                log.warning("could not list the voices of %s (%s); showing the last known ones", self._where, exc)
            with self._lock:
                self._known = (time.monotonic(), names)
        return list(names)

    def stale(self) -> None:
        """Ask again next time (a voice was just made)."""
        with self._lock:
            self._known = (0.0, self._known[1])


@contextlib.contextmanager
def watch_cancel(cancel: CancelToken | None, action: Callable[[], None], name: str = "omni-cancel-watch"):
    """While inside the block, run ``action`` in a thread of its own the moment ``cancel`` is
    set, even while the caller is blocked reading (e.g. to cut a connection); after the
    block it no longer runs. Without a token there is nothing to watch."""
    if cancel is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if cancel.wait(0.1):
                if not done.is_set():
                    action()
                return

    threading.Thread(target=watch, name=name, daemon=True).start()
    try:
        yield
    finally:
        done.set()


@dataclass(frozen=True)
class BackendInfo:
    """What the app shows about the model behind a backend and what it can do."""

    #: The model's name, e.g. ``Qwen/Qwen2.5-Omni-7B`` or ``tiny``.
    model: str
    #: One line for the page's banner: model, device, engine or server.
    description: str
    #: The generation engine (``streaming``, ``reference``; a server's for a remote model).
    engine: str = ""
    #: The tiny random test model: its replies are noise (the app says so).
    is_tiny: bool = False
    #: Whether :meth:`Backend.inspect` works (it needs the model's weights in this process).
    can_inspect: bool = False
    #: Whether exact-text speech works (:attr:`Request.speak_text`).
    can_speak_text: bool = True
    #: Whether :meth:`Backend.create_voice` works.
    can_create_voices: bool = True
    #: Whether a created voice can be saved to the backend's voices folder.
    can_save_voices: bool = False
    #: Replies the backend makes at once (a model in this process batches them); 0: it does not
    #: say (a server queues what it can't start and tells each request its place).
    max_batch: int = 0


@dataclass(frozen=True)
class BackendStatus:
    """How busy a backend is right now (for ``/health`` and the page); ``None``: it can't tell."""

    #: A generation holds the model.
    busy: bool | None = None
    #: Requests waiting for the model.
    waiting: int | None = None
    #: Model replicas running (a scaled-out deployment).
    replicas: int | None = None


@runtime_checkable
class Backend(Protocol):
    """What the app needs from a model, wherever it runs."""

    @property
    def info(self) -> BackendInfo: ...

    def status(self) -> BackendStatus:
        """How busy the model is now; cheap (asked by every ``/health``)."""
        ...

    def warmup(self) -> None:
        """Make the first reply as quick as the next (a model in this process runs one short
        generation); a backend with nothing to warm returns at once."""
        ...

    def voices(self) -> list[str]:
        """Voice names the backend speaks with: the stock ones first (default first), then saved ones."""
        ...

    def stock_voices(self) -> list[str]:
        """The model's own voices (a custom voice is built on one of them)."""
        ...

    def stream(self, request: Request, cancel: CancelToken | None = None) -> Iterator[Event]:
        """The reply to ``request`` as events, ending with exactly one ``Done``.

        Errors the user can act on raise :class:`~omni_app.errors.OmniError`; closing the
        iterator or setting ``cancel`` stops the generation and frees the model.
        """
        ...

    def create_voice(self, name: str, reference_16k, base: str, save: bool = False) -> str:
        """Make a voice from a 16 kHz mono float32 recording on top of stock voice ``base``.

        Returns the id a :class:`Request` names it by. With ``save`` it is also written to
        the backend's voices folder and listed by :meth:`voices` from then on.
        """
        ...

    def inspect(self, conversation: Conversation, trace: Trace | None) -> Inspection:
        """How the model sees ``conversation`` (and, given its trace, how the reply was made).

        Raises :class:`~omni_app.errors.Unsupported` where the weights are not at hand.
        """
        ...

    def end_session(self, session: str) -> None:
        """The conversation ``session`` is over: drop whatever the backend kept for it."""
        ...
