"""Which replica answers: a conversation stays on the replica that served it, unless another is freer.

A replica keeps per-session state (the conversation's cache, where the engine reuses it),
so a session's next turn is cheapest where its last one ran. Each replica makes a batch
of ``batch`` replies at once and queues the rest: sending a turn to a replica whose batch
is full while another's is not makes that person wait a whole reply or more, which costs
far more than recomputing a prompt.

:class:`SessionRouter` (Ray Serve's ``RequestRouter``, an alpha API) therefore sends a
request with a session to the replica that served that session last while that replica
has a free place in its batch, or its load is at most ``slack`` requests more than the
lightest one's (the deployment uses 0: while no other replica is freer); the end of a
session always goes there, to free what it left.
Everything else goes to the replica with the lightest load, idle replicas taking turns at
random. Ray's experimental consistent-hash router keeps sessions in place too, but ignores
queues.

A replica's load is what this router knows first hand, the requests it sent there that
have not finished plus those it is choosing a replica for right now, or what Ray last heard
from the replica if that is more (other routers' requests). Ray's own queue lengths alone
are not enough: requests that arrive together are routed concurrently, each before Ray
counts the others, and they found two idle replicas equally free and could all land on
one while the other stayed idle, each then waiting a whole reply.

Ray tries the offered replicas in order and sends the request to the first that answers its
probe of the queue length in time (0.1 s at first; a replica it heard from lately is not
probed). On a loaded machine an idle replica can miss that deadline, and Ray would go
straight on to the next one offered: a busier replica, where the request waits a whole
reply, or an equally idle one that a concurrent request was just counted on. So for its
first ``PATIENCE_SECONDS`` a request is offered only the replica chosen (and counted) for
it: Ray asks that one again, with a longer deadline, and the router keeps its choice while
no other replica is lighter. After that every replica is offered, lightest first, so a hung
replica delays a request by seconds, never for good.

The homes and loads are kept in the router of each process that holds the model's handle:
the endpoint runs one ingress replica, so there is one table.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, OrderedDict

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

#: Sessions whose home replica is remembered (the least recently served are forgotten).
MAX_SESSIONS = 100_000
#: Seconds a choice still counts before Ray sends the request (a request whose caller left while it
#: was being routed is never sent, and no callback says so); a retry after a back-off chooses again.
CHOICE_SECONDS = 10.0
#: The replica method that frees a session's state: it goes to the session's home whatever the loads.
END_SESSION = "end_session"
#: Seconds a request is offered only the replica chosen for it before every replica, lightest first.
PATIENCE_SECONDS = 3.0
#: Seconds a sent request counts on its replica at most, should Ray never say it finished (a
#: replica that died with it): longer than any reply, so a real one is never forgotten.
RUNNING_SECONDS = 3600.0


class SessionRouter(RequestRouter):
    """Session affinity, bounded by load; the lightest load otherwise."""

    def initialize_state(self, slack: int = 0, max_sessions: int = MAX_SESSIONS, batch: int = 1, **kwargs) -> None:
        """``slack``: how many more requests a session's home may hold than the lightest-loaded replica;
        ``batch``: replies a replica makes at once (a home with a free place in its batch is never passed over)."""
        self._slack = int(slack)
        self._batch = int(batch)
        self._max_sessions = int(max_sessions)
        self._homes: OrderedDict[str, ReplicaID] = OrderedDict()
        self._choosing: dict[str, tuple[ReplicaID, float]] = {}  # request -> (replica, when chosen)
        self._running: dict[str, tuple[ReplicaID, float]] = {}  # request -> (replica, when sent), until finished
        # Ray calls the router from its event loop and from the threads that finish requests.
        self._lock = threading.Lock()

    def _state(self) -> None:
        # initialize_state runs when the router is configured; be safe if it was not.
        if not hasattr(self, "_homes"):
            self.initialize_state()

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        self._state()
        if not candidate_replicas:
            return []
        with self._lock:
            return self._choose(candidate_replicas, pending_request)

    def _choose(self, candidate_replicas: list[RunningReplica],
                pending_request: PendingRequest | None) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # When no replica offered took it (all full, or slow to answer), wait a little before asking again.
            pending_request.routing_context.should_backoff = True
        request = _meta(pending_request, "internal_request_id")
        # A retry: its earlier choice was not taken (yet). Among equals it is chosen again, so
        # that what concurrent requests were told about it stays true.
        earlier, _ = self._choosing.pop(request, (None, 0.0))
        load = self._loads(candidate_replicas)
        # Lightest first, ties in random order: this choice, counted at once, is what a
        # concurrent request sees.
        ranked = sorted(random.sample(candidate_replicas, len(candidate_replicas)),
                        key=lambda r: (load[r.replica_id], r.replica_id != earlier))
        home = self._home(ranked, pending_request, load)
        if home is not None:
            ranked.remove(home)
            ranked.insert(0, home)
        if pending_request is not None and time.time() - pending_request.created_at < PATIENCE_SECONDS:
            # Only the chosen one: not another because the chosen one was slow to say it is free.
            ranked = ranked[:1]
        if request:
            self._choosing[request] = (ranked[0].replica_id, time.monotonic())
        return [[replica] for replica in ranked]

    def _loads(self, candidates: list[RunningReplica]) -> dict[ReplicaID, int]:
        now = time.monotonic()
        for request, (_, when) in list(self._choosing.items()):
            if now - when > CHOICE_SECONDS:
                del self._choosing[request]
        for request, (_, when) in list(self._running.items()):
            if now - when > RUNNING_SECONDS:
                del self._running[request]
        ours = Counter(replica for replica, _ in self._running.values())
        ours.update(replica for replica, _ in self._choosing.values())
        cache = self.replica_queue_len_cache
        return {r.replica_id: max(ours[r.replica_id], cache.get(r.replica_id) or 0) for r in candidates}

    def _home(self, candidates: list[RunningReplica], pending_request: PendingRequest | None,
              load: dict[ReplicaID, int]) -> RunningReplica | None:
        session = _meta(pending_request, "session_id")
        replica_id = self._homes.get(session) if session else None
        home = next((r for r in candidates if r.replica_id == replica_id), None)
        if home is None:
            return None
        if _meta(pending_request, "call_method") == END_SESSION:
            return home  # only the home holds what the session left (its cache): tell that one, however busy
        if load[home.replica_id] < self._batch or load[home.replica_id] <= min(load.values()) + self._slack:
            return home
        return None

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        self._state()
        with self._lock:
            self._routed(pending_request, replica_id)

    def _routed(self, pending_request: PendingRequest, replica_id: ReplicaID) -> None:
        request = _meta(pending_request, "internal_request_id")
        self._choosing.pop(request, None)
        if request:
            self._running[request] = (replica_id, time.monotonic())
        session = _meta(pending_request, "session_id")
        if session and _meta(pending_request, "call_method") == END_SESSION:
            self._homes.pop(session, None)
        elif session:
            self._homes[session] = replica_id
            self._homes.move_to_end(session)
            while len(self._homes) > self._max_sessions:
                self._homes.popitem(last=False)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        # Ray calls this once for every request it sent, finished, failed or refused; a refused
        # one may already be on its way to another replica, where it still counts.
        self._state()
        with self._lock:
            if self._running.get(internal_request_id, (None,))[0] == replica_id:
                del self._running[internal_request_id]
            if self._choosing.get(internal_request_id, (None,))[0] == replica_id:
                del self._choosing[internal_request_id]


def _meta(pending_request: PendingRequest | None, field: str) -> str:
    """A field of a request's metadata: ``session_id`` (set with ``handle.options(session_id=...)``),
    ``internal_request_id`` (Ray's id of the request, the same across its routing retries) or
    ``call_method`` (the replica method it calls); "" when there is none."""
    return getattr(getattr(pending_request, "metadata", None), field, "") or ""
