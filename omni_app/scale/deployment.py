"""The Ray Serve application: model replicas, and one HTTP endpoint in front of them.

Two deployments:

- ``OmniModel``: :class:`~.replica.ModelReplica`, one loaded model per replica, ``N``
  replicas or autoscaled between a minimum and a maximum on ongoing requests, each with
  its CPUs and GPUs (``num_gpus: 1`` on GPUs); routed by :class:`~.router.SessionRouter`;
- ``OmniIngress``: the OpenAI-compatible app of ``python -m omni_app serve``
  (:func:`omni_app.serve.server.make_app`) over a :class:`~.backend.ReplicaBackend`.

Where requests wait: each replica makes up to ``max_batch`` replies at once, in one batch,
and queues the others in arrival order, telling each its place (a ``notice`` chunk; the
app's status line shows it). Ray only routes; a request it can't route waits in its router, silently. So the
model's ``max_ongoing_requests`` is the endpoint's ``max_active``: one replica could take
every request the endpoint admits, Ray's router never holds one back while a replica is up,
and the endpoint answers 429 beyond that. The router still spreads requests by queue length.

:func:`build` is also the ``import_path`` of a Serve config file (``deploy/ray-serve.yaml``:
``serve run`` / ``serve deploy``); its ``args`` are those of :func:`parse_args`.
"""

from __future__ import annotations

from ray import serve

from ..serve.server import ServerSettings, make_app
from .backend import ReplicaBackend
from .replica import ModelReplica, ReplicaConfig
from .settings import INGRESS, MODEL, ScaleSettings, parse_args

ROUTER = "omni_app.scale.router.SessionRouter"
#: Requests other than replies (health, models, voices) the endpoint answers while ``max_active`` are running.
SIDE_REQUESTS = 16
#: Seconds a replica being removed (scale-down, redeploy) may take to finish the replies it holds.
DRAIN_SECONDS = 300.0


@serve.deployment(name=INGRESS)
@serve.ingress()
class Endpoint:
    """The HTTP endpoint: the OpenAI-compatible app over the model replicas."""

    def __init__(self, model, settings: ServerSettings) -> None:
        self._model = model
        self._settings = settings

    async def __serve_build_asgi_app__(self):
        described = await self._model.describe.remote()
        app_name = serve.get_replica_context().app_name
        backend = ReplicaBackend(self._model, described, status=lambda: running_replicas(app_name))
        return make_app(backend, self._settings)


def running_replicas(app_name: str) -> int:
    """Model replicas of application ``app_name`` that are serving now."""
    deployment = serve.status().applications[app_name].deployments[MODEL]
    return int(sum(n for state, n in deployment.replica_states.items() if getattr(state, "value", state) == "RUNNING"))


def application(replica: ReplicaConfig, settings: ServerSettings, scale: ScaleSettings):
    """The Serve application (bind it with ``serve.run``)."""
    options: dict = {
        "max_ongoing_requests": settings.max_active,
        "ray_actor_options": {"num_cpus": scale.cpus_per_replica, "num_gpus": scale.gpus_per_replica},
        "request_router_config": {"request_router_class": ROUTER,
                                  "request_router_kwargs": {"slack": 0, "batch": replica.max_batch}},
        "graceful_shutdown_timeout_s": DRAIN_SECONDS,
        # A model that failed to load (a wrong name, no room on the GPU) fails again: say so soon.
        "max_constructor_retry_count": 2,
    }
    if scale.autoscaling:
        options["autoscaling_config"] = {"min_replicas": scale.min_replicas, "max_replicas": scale.max_replicas,
                                         "target_ongoing_requests": scale.target_ongoing}
    else:
        options["num_replicas"] = scale.replicas
    model = serve.deployment(ModelReplica, name=MODEL).options(**options)
    ingress = Endpoint.options(num_replicas=1, max_ongoing_requests=settings.max_active + SIDE_REQUESTS,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(model.bind(replica), settings)


def build(args: dict):
    """Serve's application builder: ``import_path: omni_app.scale.deployment:build`` with these ``args``."""
    return application(*parse_args(args))
