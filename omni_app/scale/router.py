"""Which replica answers: a conversation stays on the replica that served it, unless another is clearly freer.

A replica keeps per-session state (the conversation's cache, where the engine reuses it),
so a session's next turn is cheapest where its last one ran. But each replica generates
one reply at a time: sending a turn to a replica with a longer queue than another's makes
that person wait a whole reply or more, which costs far more than recomputing a prompt.

:class:`SessionRouter` (Ray Serve's ``RequestRouter``, an alpha API) therefore sends a
request with a session to the replica that served that session last while its queue is
at most ``slack`` requests longer than the shortest one; everything else goes to the
replica with the shortest queue (Ray probes queue lengths it does not know). Ray's
experimental consistent-hash router keeps sessions in place too, but ignores queues.

The homes are remembered in the router of each process that holds the model's handle:
the endpoint runs one ingress replica, so there is one table.
"""

from __future__ import annotations

import random
from collections import OrderedDict

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

#: Sessions whose home replica is remembered (the least recently served are forgotten).
MAX_SESSIONS = 100_000


class SessionRouter(RequestRouter):
    """Session affinity, bounded by queue length; shortest queue otherwise."""

    def initialize_state(self, slack: int = 1, max_sessions: int = MAX_SESSIONS, **kwargs) -> None:
        """``slack``: how many more waiting requests a session's home may have than the freest replica."""
        self._slack = int(slack)
        self._max_sessions = int(max_sessions)
        self._homes: OrderedDict[str, ReplicaID] = OrderedDict()

    def _state(self) -> None:
        # initialize_state runs when the router is configured; be safe if it was not.
        if not hasattr(self, "_homes"):
            self.initialize_state()

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        self._state()
        if not candidate_replicas:
            return []
        if pending_request is not None:
            # When every replica refuses (all full), wait a little before asking again.
            pending_request.routing_context.should_backoff = True
        # Ray picks the replica with the shortest queue within a rank, the first one on a tie:
        # shuffled, idle replicas share new conversations evenly.
        candidates = random.sample(candidate_replicas, len(candidate_replicas))
        home = self._home(candidates, pending_request)
        if home is not None:
            return [[home], candidates]
        return [candidates]

    def _home(self, candidates: list[RunningReplica], pending_request: PendingRequest | None) -> RunningReplica | None:
        session = _session(pending_request)
        replica_id = self._homes.get(session) if session else None
        home = next((r for r in candidates if r.replica_id == replica_id), None)
        if home is None:
            return None
        cache = self.replica_queue_len_cache
        lengths = [n for n in (cache.get(r.replica_id) for r in candidates) if n is not None]
        home_length = cache.get(home.replica_id)
        if home_length is None or not lengths or home_length <= min(lengths) + self._slack:
            return home
        return None

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        self._state()
        session = _session(pending_request)
        if session:
            self._homes[session] = replica_id
            self._homes.move_to_end(session)
            while len(self._homes) > self._max_sessions:
                self._homes.popitem(last=False)


def _session(pending_request: PendingRequest | None) -> str:
    """The session a request belongs to (set with ``handle.options(session_id=...)``)."""
    if pending_request is None:
        return ""
    return getattr(pending_request.metadata, "session_id", "") or ""
