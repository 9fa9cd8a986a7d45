"""``python -m omni_app serve --ray``: the model server on Ray Serve, with several replicas.

It starts Ray on this machine (or joins a cluster with ``--ray-address``), deploys the
application of :mod:`.deployment`, prints where it listens and serves until interrupted;
then it removes the application and stops the Ray it started. For a standing cluster of
several machines, deploy ``deploy/ray-serve.yaml`` with ``serve deploy`` instead.
"""

from __future__ import annotations

import logging
import signal
import sys
import time

from ..errors import RequestError
from ..serve.command import is_loopback
from .settings import APP_NAME, parse_args


def app_args(args, resources: dict) -> dict:
    """The application's arguments from the command's options and the cluster's ``resources``.

    By default a replica gets a GPU when the cluster has GPUs, and then its share of the
    CPUs (the processor's audio and video work, and PyTorch's threads, run there); one CPU
    otherwise.
    """
    gpus_in_cluster = resources.get("GPU", 0.0)
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if gpus_in_cluster > 0 and not str(args.device).startswith("cpu") else 0.0
    cpus = args.cpus_per_replica
    if cpus is None:
        share = resources.get("CPU", 1.0) / gpus_in_cluster * gpus if gpus > 0 and gpus_in_cluster > 0 else 1.0
        cpus = float(max(1, int(share)))
    return {
        "model": args.model, "device": args.device, "dtype": args.dtype, "engine": args.engine,
        "voices_dir": str(args.voices_dir) if args.voices_dir else None, "warmup": not args.no_warmup,
        "session_cache_mb": args.session_cache_mb, "max_batch": args.max_batch,
        "max_new_tokens": args.max_new_tokens, "max_speech_seconds": args.max_speech_seconds,
        "max_active": args.max_active, "max_body_mb": args.max_body_mb, "api_key": args.api_key or None,
        "replicas": args.replicas, "min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
        "target_ongoing": args.target_ongoing, "cpus_per_replica": cpus, "gpus_per_replica": gpus,
    }


def run(args) -> int:
    """Start (or join) Ray, deploy, serve until interrupted, clean up."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise RequestError(f"--ray needs Ray Serve ({exc}): pip install -r requirements-ray.txt") from exc

    from .deployment import application

    if args.backend:
        raise RequestError("--ray serves a model loaded in each replica; --backend (relaying a server) can't be "
                           "combined with it.")
    parse_args(app_args(args, {}))  # refuse bad options before starting anything
    joined = bool(args.ray_address)
    where = f"joining the Ray cluster at {args.ray_address}" if joined else "starting Ray on this machine"
    print(f"omni_app: {where} ...", flush=True)
    if joined:
        ray.init(address=args.ray_address, logging_level=logging.WARNING)
    else:
        start_ray(include_dashboard=False)
    # Stop cleanly on SIGTERM too (after ray.init, which installs a handler of its own that just dies):
    # the local Ray processes are ours to stop.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        settings = app_args(args, ray.cluster_resources())
        replica, server, scale = parse_args(settings)
        count = (f"{scale.min_replicas}-{scale.max_replicas} replicas (autoscaling)" if scale.autoscaling
                 else f"{scale.replicas} replica{'s' if scale.replicas != 1 else ''}")
        print(f"omni_app: loading {replica.model} in {count}, {scale.cpus_per_replica:g} CPU and "
              f"{scale.gpus_per_replica:g} GPU each ...", flush=True)
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config={"log_level": "WARNING"})
        serve.run(application(replica, server, scale), name=APP_NAME, route_prefix="/",
                  logging_config={"log_level": "WARNING"})
        if not is_loopback(args.host) and not server.api_key:
            print(f"omni_app: warning: listening on {args.host} without an API key: anyone who can reach this port "
                  "can use the model. Set --api-key (or OMNI_APP_API_KEY).", file=sys.stderr, flush=True)
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"omni_app: serving {replica.model} on Ray Serve at http://{host}:{args.port}/v1 (OpenAI-compatible; "
              "health at /health)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("omni_app: stopping ...", file=sys.stderr, flush=True)
    finally:
        try:
            if joined:
                serve.delete(APP_NAME)  # the cluster and its other applications stay
            else:
                serve.shutdown()
        finally:
            ray.shutdown()
    return 0


def start_ray(attempts: int = 3, **options) -> None:
    """Start Ray on this machine (``ray.init`` with ``options``), trying again when it starts too slowly.

    Ray gives its node 30 s to register; on a busy machine that is not always enough,
    and a second try then usually succeeds (the first one's processes are stopped).
    """
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(logging_level=logging.WARNING, **options)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()
            print(f"omni_app: Ray started too slowly ({exc}); trying again", file=sys.stderr, flush=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
