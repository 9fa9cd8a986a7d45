"""One copy of the model in one Ray Serve replica.

:class:`ModelReplica` owns a :class:`~omni_app.engine.local.LocalBackend`: its own loaded
model, its own batch of replies and first-come-first-served queue beyond it (whose waiters are told
their place), its
own sessions. Its methods are what the endpoint calls through a deployment handle; every
argument and every event crosses processes pickled, as plain data.

A reply streams from :meth:`ModelReplica.stream`, an async generator. When the endpoint
cancels the call (its client disconnected, or pressed Stop), Ray cancels the generator
here; the ``finally`` sets the request's cancel token, so the model stops within one step
or the request leaves the queue, and the replica is free for the next request.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from ..api import CancelToken, Request
from ..config import ServiceConfig
from ..events import Done, Event
from ..serve.bridge import END, Pump
from ..voices import Voice

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ReplicaConfig:
    """What each replica loads (plain data: it travels to every replica)."""

    model: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    engine: str = "streaming"
    #: Saved voices, loaded at start (on a cluster: a folder every node sees at this path).
    voices_dir: str | None = None
    warmup: bool = True
    #: Memory for the conversations' caches in each replica (see ServiceConfig.session_cache_mb).
    session_cache_mb: int = ServiceConfig.session_cache_mb
    #: Replies each replica makes at once, in one batch (see ServiceConfig.max_batch).
    max_batch: int = ServiceConfig.max_batch


class ModelReplica:
    """A loaded model, called by the endpoint through a Ray Serve deployment handle."""

    def __init__(self, config: ReplicaConfig) -> None:
        from ..engine.local import LocalBackend

        service_config = ServiceConfig(model=config.model, device=config.device, dtype=config.dtype,
                                       engine=config.engine, session_cache_mb=config.session_cache_mb,
                                       max_batch=config.max_batch)
        voices_dir = Path(config.voices_dir) if config.voices_dir else None
        self.backend = LocalBackend.from_config(service_config, voices_dir)
        for problem in self.backend.load_voices():
            log.warning("%s It was skipped.", problem)
        if config.warmup:
            self.backend.warmup()
        #: Named in every reply's stats (``served_by``), so a client can tell replicas apart.
        self.name = f"{_replica_id()}@{socket.gethostname()}:{os.getpid()}"
        log.info("model replica %s ready: %s", self.name, self.backend.info.description)

    def describe(self) -> dict:
        """What the endpoint tells clients about the model: its info and voices."""
        return {"info": self.backend.info, "voices": self.backend.voices(), "stock": self.backend.stock_voices(),
                "replica": self.name}

    async def stream(self, request: Request, voice: tuple[str, Voice] | None = None) -> AsyncIterator[Event]:
        """The reply's events; ``voice`` is a voice made on another replica, with the id the request names it by."""
        if voice is not None:
            self.backend.adopt_voice(*voice)
        cancel = CancelToken()
        pump = Pump(self.backend.stream(request, cancel), cancel)
        try:
            while (event := await pump.next()) is not END:
                if isinstance(event, Done):
                    event = dataclasses.replace(event, stats=dataclasses.replace(event.stats, served_by=self.name))
                yield event
        finally:
            # Reached at the end, on an error, and when Ray cancels the call (the client left):
            # the generation stops within one step, or the request leaves the queue.
            pump.close()

    def make_voice(self, name: str, reference_16k, base: str, save: bool) -> tuple[str, Voice]:
        """Make a voice here; returns its id and the voice itself (the other replicas get it with each request)."""
        voice_id = self.backend.create_voice(name, reference_16k, base, save)
        return voice_id, self.backend.voice_data(voice_id)

    def end_session(self, session: str) -> None:
        self.backend.end_session(session)


def _replica_id() -> str:
    """This replica's id in Ray Serve (unique within the deployment)."""
    from ray import serve

    return serve.get_replica_context().replica_id.unique_id
