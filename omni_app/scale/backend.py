"""The model replicas of a Ray Serve deployment, as one :class:`~omni_app.api.Backend`.

The endpoint's HTTP app (:func:`omni_app.serve.server.make_app`, unchanged) serves a
:class:`ReplicaBackend`. Each request goes through a deployment handle to one replica
(the router picks which) and its events stream back as the replica yields them: the
queue notices of the replica it waits on, text, audio, and ``Done`` naming the replica.
Setting a request's cancel token cancels the handle call, and Ray cancels the
generation in the replica.

Voices made through the endpoint are kept here and travel with each request that names
one, so every replica speaks them, whichever made them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator

from ..api import BackendInfo, BackendStatus, CancelToken, Request, VoiceList, watch_cancel
from ..errors import BackendUnavailable, OmniError, Unsupported, unexpected
from ..events import Done, Event, StreamClock
from ..voices import Voice

log = logging.getLogger(__name__)

#: Voices made through the endpoint and kept here (the oldest go first), as in one model service.
MAX_VOICES = 256
#: How long the replicas' list of voices and count are trusted before asking again.
REFRESH_SECONDS = 10.0


class ReplicaBackend:
    """The replicas behind ``handle`` (a deployment handle of :class:`~.replica.ModelReplica`)."""

    def __init__(self, handle, described: dict, status=None) -> None:
        self._handle = handle
        self._streaming = handle.options(stream=True)
        info: BackendInfo = described["info"]
        # Looking inside needs the weights in the caller's process.
        self._info = dataclasses.replace(info, can_inspect=False,
                                         description=f"{info.description} · replicas on Ray Serve")
        self._stock = list(described["stock"])
        self._listed = VoiceList(lambda: list(self._handle.describe.remote().result(timeout_s=30)["voices"]),
                                 list(described["voices"]), "the replicas", REFRESH_SECONDS)
        self._voices: OrderedDict[str, Voice] = OrderedDict()
        self._lock = threading.Lock()
        #: ``() -> int``: replicas running now (for /health); ``None`` where unknown.
        self._status = status
        self._replicas: tuple[float, int | None] = (0.0, None)

    @property
    def info(self) -> BackendInfo:
        return self._info

    def stock_voices(self) -> list[str]:
        return list(self._stock)

    def voices(self) -> list[str]:
        names = self._listed.get()
        with self._lock:
            made = [name for name, voice in self._voices.items() if name == voice.name]  # saved ones
        return names + [name for name in made if name not in names]

    def status(self) -> BackendStatus:
        # Each replica knows its own load; the endpoint knows how many there are.
        return BackendStatus(replicas=self._count_replicas())

    def warmup(self) -> None:
        """Each replica warms itself up as it starts."""

    def _count_replicas(self) -> int | None:
        """Model replicas running now (asked at most every few seconds)."""
        checked, count = self._replicas
        if self._status is not None and time.monotonic() - checked > 2.0:
            try:
                count = self._status()
            except Exception as exc:
                log.warning("could not count the replicas: %s", exc)
            self._replicas = (time.monotonic(), count)
        return count

    def stream(self, request: Request, cancel: CancelToken | None = None) -> Iterator[Event]:
        with self._lock:
            voice = self._voices.get(request.voice) if request.voice is not None else None
        handle = self._streaming.options(session_id=request.session) if request.session else self._streaming
        clock = StreamClock("replica", self._info.engine)
        replies = handle.stream.remote(request, None if voice is None else (request.voice, voice))
        ended = False
        # Cancels the handle call the moment the token is set, even while a read waits for an event.
        with watch_cancel(cancel, replies.cancel, "omni-replica-cancel"):
            try:
                for event in replies:
                    yield clock.seen(event)
                    if cancel is not None and cancel.is_set() and not isinstance(event, Done):
                        break
                ended = True
            except Exception as exc:
                ended = True
                if not (cancel is not None and cancel.is_set()):
                    raise replica_error(exc, clock.audio_seconds) from None
            finally:
                if not ended:  # the caller closed the stream early: stop the replica's generation
                    replies.cancel()
            if cancel is not None and cancel.is_set() and not clock.done:
                # Cancelled by us: the replica stopped; the stream ends as a cancelled one does.
                replies.cancel()
                yield clock.cut_short()

    def create_voice(self, name: str, reference_16k, base: str, save: bool = False) -> str:
        try:
            # It waits its turn for the model like a reply; a replica that never answers fails it.
            voice_id, voice = self._handle.make_voice.remote(name, reference_16k, base, save).result(timeout_s=600)
        except Exception as exc:
            raise replica_error(exc, 0.0) from None
        with self._lock:
            self._voices[voice_id] = voice
            self._voices.move_to_end(voice_id)
            while len(self._voices) > MAX_VOICES:
                self._voices.popitem(last=False)
        return voice_id

    def inspect(self, conversation, trace):
        raise Unsupported("The model runs in Ray Serve replicas: looking inside it needs its weights in this process "
                          "(start the app with --model instead of --backend).")

    def end_session(self, session: str) -> None:
        # To the replica the session was served by (the router keeps it there).
        try:
            self._handle.options(session_id=session).end_session.remote(session).result(timeout_s=30)
        except Exception as exc:
            log.warning("could not tell a replica that session %s ended: %s", session, exc)


def replica_error(exc: BaseException, audio_seconds: float) -> OmniError:
    """What went wrong in a replica, as the error a person reads (never Ray's traceback)."""
    from ray import exceptions as ray_errors
    from ray.serve.exceptions import BackPressureError

    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray_errors.RayTaskError) and isinstance(cause, OmniError):
        return cause  # the user's mistake, said as the model service says it
    if isinstance(exc, OmniError):
        return exc
    if isinstance(exc, ray_errors.RayActorError):
        where = f" after {audio_seconds:.1f} s of speech" if audio_seconds else ""
        return BackendUnavailable(f"The model replica answering this request stopped{where} (it crashed or was shut "
                                  "down). Ask again: another replica will answer.")
    if isinstance(exc, BackPressureError):
        return BackendUnavailable("All model replicas are full. Try again shortly.")
    return BackendUnavailable(f"A model replica failed. {unexpected(exc, 'a model replica', log)}")
