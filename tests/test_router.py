"""The replica chooser of the Ray Serve deployment, on Ray's own router class, without a cluster."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.ray

from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata  # noqa: E402
from ray.serve.request_router import PendingRequest  # noqa: E402

from omni_app.scale import router as router_module  # noqa: E402
from omni_app.scale.router import SessionRouter  # noqa: E402

DEPLOYMENT = DeploymentID(name="OmniModel", app_name="omni")


@dataclass
class Replica:
    """What the router reads of a running replica."""

    replica_id: ReplicaID
    max_ongoing_requests: int = 8


@pytest.fixture(autouse=True)
def loop():
    """Ray's pending requests carry a future: they are made where an event loop is current."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


def make_router(slack: int = 0, batch: int = 1) -> tuple[SessionRouter, list[Replica]]:
    router = SessionRouter(DEPLOYMENT, DeploymentHandleSource.UNKNOWN, use_replica_queue_len_cache=True)
    router.initialize_state(slack=slack, batch=batch)
    return router, [Replica(ReplicaID(unique_id=name, deployment_id=DEPLOYMENT)) for name in ("a", "b")]


def pending(n: int, session: str = "") -> PendingRequest:
    return PendingRequest(args=[], kwargs={}, metadata=RequestMetadata(
        request_id=f"r{n}", internal_request_id=f"internal-{n}", session_id=session))


def offered(router, replicas, request) -> list[ReplicaID]:
    """The replicas Ray may try for ``request``, in the order it tries them (one per rank)."""
    ranks = asyncio.get_event_loop().run_until_complete(router.choose_replicas(replicas, request))
    assert ranks and all(len(rank) == 1 for rank in ranks)
    return [rank[0].replica_id for rank in ranks]


def choose(router, replicas, request) -> ReplicaID:
    """The replica Ray tries first for ``request``."""
    return offered(router, replicas, request)[0]


def test_requests_routed_together_go_to_different_idle_replicas():
    for _ in range(20):  # idle replicas tie and are shuffled: every try must split them
        router, replicas = make_router()
        first, second = pending(1), pending(2)
        # Both are being chosen for before Ray has sent either (and counted it in its queue lengths).
        assert choose(router, replicas, first) != choose(router, replicas, second)


def test_a_finished_request_frees_its_replica_and_a_retry_is_not_counted_twice():
    router, replicas = make_router()
    a, b = (r.replica_id for r in replicas)
    request = pending(1)
    for _ in range(3):  # Ray asks again after a back-off: still one request
        chosen = choose(router, replicas, request)
    router.on_request_routed(request, chosen, None)
    other = b if chosen == a else a
    assert choose(router, replicas, pending(2)) == other
    router.on_request_completed(other, "internal-2")
    router.on_request_completed(chosen, "internal-1")
    assert router._loads(replicas) == {a: 0, b: 0}


def test_a_refused_request_counts_where_it_went():
    router, replicas = make_router()
    a, b = (r.replica_id for r in replicas)
    request = pending(1)
    choose(router, replicas, request)
    router.on_request_routed(request, b, None)
    router.on_request_completed(a, "internal-1")  # the refusal of the first try comes in late
    assert router._loads(replicas) == {a: 0, b: 1}


def test_conversations_at_home_on_one_replica_that_arrive_together_split():
    router, replicas = make_router()  # the deployment's: home while no other replica is freer
    a, b = (r.replica_id for r in replicas)
    for n, session in enumerate(("ann", "bob")):  # both were served by a, one after the other
        router.on_request_routed(pending(n, session), a, None)
        router.on_request_completed(a, f"internal-{n}")
    assert choose(router, replicas, pending(2, "ann")) == a
    assert choose(router, replicas, pending(3, "bob")) == b  # rather than wait for ann's whole reply


def test_with_slack_a_conversation_goes_home_unless_home_is_clearly_busier():
    router, replicas = make_router(slack=1)
    a, b = (r.replica_id for r in replicas)
    router.on_request_routed(pending(1, "talk"), a, None)
    router.on_request_completed(a, "internal-1")
    router.on_request_routed(pending(2), a, None)  # someone else's reply runs at home
    assert choose(router, replicas, pending(3, "talk")) == a  # one more than b: within the slack
    router.on_request_completed(a, "internal-3")
    router._choosing.clear()
    router.on_request_routed(pending(4), a, None)  # two more than b: the turn goes elsewhere
    assert choose(router, replicas, pending(5, "talk")) == b


def test_a_choice_never_sent_stops_counting(monkeypatch):
    router, replicas = make_router()
    now = [1000.0]
    monkeypatch.setattr(router_module.time, "monotonic", lambda: now[0])
    chosen = choose(router, replicas, pending(1))  # its caller left while it was being routed
    assert router._loads(replicas)[chosen] == 1
    now[0] += router_module.CHOICE_SECONDS + 1
    assert set(router._loads(replicas).values()) == {0}


def test_a_request_that_never_finishes_stops_counting_after_the_longest_reply(monkeypatch):
    router, replicas = make_router()
    a, _ = (r.replica_id for r in replicas)
    now = [1000.0]
    monkeypatch.setattr(router_module.time, "monotonic", lambda: now[0])
    router.on_request_routed(pending(1), a, None)  # its replica died with it: Ray never says it finished
    now[0] += router_module.RUNNING_SECONDS - 1
    assert router._loads(replicas)[a] == 1  # a long reply still counts
    now[0] += 2
    assert set(router._loads(replicas).values()) == {0}


def test_the_end_of_a_session_reaches_its_home_however_busy():
    router, replicas = make_router(slack=1)
    a, b = (r.replica_id for r in replicas)
    router.on_request_routed(pending(1, "talk"), a, None)
    for n in (2, 3, 4):
        router.on_request_routed(pending(n), a, None)  # home is far busier than b
    end = PendingRequest(args=[], kwargs={}, metadata=RequestMetadata(
        request_id="r9", internal_request_id="internal-9", session_id="talk", call_method="end_session"))
    assert choose(router, replicas, end) == a
    router.on_request_routed(end, a, None)
    assert "talk" not in router._homes  # ended: nothing left to go home to


def test_a_request_waits_for_the_replica_chosen_for_it_before_it_may_go_elsewhere():
    # Ray sends to the first offered replica that answers its probe in time; an idle replica
    # slow to answer (a loaded machine) must not send the request to a busy one at once.
    router, replicas = make_router()
    a, b = (r.replica_id for r in replicas)
    router.on_request_routed(pending(1), a, None)  # a is generating
    assert offered(router, replicas, pending(2)) == [b]
    router.on_request_completed(b, "internal-2")  # its caller left
    late = pending(3)
    late.created_at -= router_module.PATIENCE_SECONDS + 1  # b has not answered for a while: hung
    assert offered(router, replicas, late) == [b, a]


def test_a_retry_keeps_its_choice_among_equally_free_replicas():
    # Nor to the other idle replica, which a request arriving meanwhile was counted on.
    for _ in range(10):
        router, replicas = make_router()
        request = pending(1)
        (chosen,) = offered(router, replicas, request)
        assert all(offered(router, replicas, request) == [chosen] for _ in range(5))


def test_a_conversation_goes_home_while_its_batch_has_room():
    router, replicas = make_router(batch=2)  # each replica makes two replies at once
    a, b = (r.replica_id for r in replicas)
    router.on_request_routed(pending(1, "talk"), a, None)
    router.on_request_completed(a, "internal-1")
    router.on_request_routed(pending(2), a, None)  # someone else's reply runs at home, b is idle
    assert choose(router, replicas, pending(3, "talk")) == a  # a place is free in home's batch: no wait
    router.on_request_routed(pending(3, "talk"), a, None)
    assert choose(router, replicas, pending(4, "talk")) == b  # home's batch is full: the idle replica
