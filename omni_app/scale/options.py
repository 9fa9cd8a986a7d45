"""The options of ``python -m omni_app serve --ray`` (argparse only: nothing of Ray is imported here)."""

from __future__ import annotations

import argparse

from ..errors import RequestError


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """``serve --ray``: several copies of the model behind one endpoint, on Ray Serve (needs requirements-ray.txt)."""
    ray = parser.add_argument_group("scale out on Ray Serve (pip install -r requirements-ray.txt)")
    ray.add_argument("--ray", action="store_true", help="serve with Ray Serve: one model per replica, one endpoint")
    ray.add_argument("--replicas", type=int, default=1, help="copies of the model (default: %(default)s)")
    ray.add_argument("--min-replicas", type=int, help="autoscale on ongoing requests from this many replicas ...")
    ray.add_argument("--max-replicas", type=int, help="... up to this many (give both)")
    ray.add_argument("--target-ongoing", type=float, help="ongoing requests per replica the autoscaler aims for "
                     "(default: --max-batch, a full batch)")
    ray.add_argument("--cpus-per-replica", type=float, help="CPUs each replica reserves (default: its share of "
                     "the CPUs per GPU with GPU replicas, else 1)")
    ray.add_argument("--gpus-per-replica", type=float, help="GPUs each replica reserves (default: 1 when the "
                     "cluster has GPUs and --device is not cpu, else 0)")
    ray.add_argument("--ray-address", help="join this Ray cluster (e.g. auto, or the head's host:6379) instead of "
                     "starting Ray on this machine")


def check_ray_options(args) -> None:
    """Scale options without ``--ray`` would be ignored: say so instead."""
    if not args.ray and (args.replicas != 1 or args.min_replicas or args.max_replicas or args.ray_address):
        raise RequestError("--replicas, --min-replicas, --max-replicas and --ray-address need --ray.")
