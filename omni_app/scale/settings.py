"""What a scaled-out deployment is made of, from the command's options or a Serve config's ``args``.

No Ray here: the options are checked (and a clear message given) before Ray starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..config import GenerationLimits, MediaLimits, ServiceConfig
from ..errors import RequestError
from ..serve.state import ServerSettings
from .replica import ReplicaConfig

APP_NAME = "omni_app"
MODEL, INGRESS = "OmniModel", "OmniIngress"


@dataclass(frozen=True)
class ScaleSettings:
    """How many replicas, and what each gets."""

    #: Fixed number of replicas (when no minimum and maximum are given).
    replicas: int = 1
    #: Autoscaling between these on ongoing requests per replica (both, or neither).
    min_replicas: int | None = None
    max_replicas: int | None = None
    #: Ongoing requests per replica the autoscaler aims for (by default a replica's full batch).
    target_ongoing: float = float(ServiceConfig.max_batch)
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0

    def __post_init__(self) -> None:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise RequestError("Autoscaling needs both min_replicas and max_replicas.")
        if self.autoscaling and not 1 <= self.min_replicas <= self.max_replicas:
            raise RequestError("Replicas must satisfy 1 <= min_replicas <= max_replicas (a replica takes minutes to "
                               "load a model: scaling to zero would leave the first user waiting that long).")
        if self.replicas < 1:
            raise RequestError("replicas must be at least 1.")
        if self.target_ongoing <= 0 or self.cpus_per_replica < 0 or self.gpus_per_replica < 0:
            raise RequestError("target_ongoing must be positive; CPUs and GPUs per replica can't be negative.")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None


#: The builder's arguments and their defaults (``serve run ... key=value`` passes strings).
ARGS = {
    "model": "auto", "device": "auto", "dtype": "auto", "engine": "streaming", "voices_dir": None, "warmup": True,
    "session_cache_mb": ServiceConfig.session_cache_mb, "max_batch": ServiceConfig.max_batch,
    "max_new_tokens": GenerationLimits.max_new_tokens, "max_speech_seconds": GenerationLimits.max_speech_seconds,
    "max_active": ServerSettings.max_active, "max_body_mb": None, "api_key": None,
    "replicas": 1, "min_replicas": None, "max_replicas": None, "target_ongoing": None,
    "cpus_per_replica": 1.0, "gpus_per_replica": 0.0,
}


#: The placeholder key deploy/ray-serve.yaml ships with: refused, so no cluster runs with a known key.
EXAMPLE_API_KEY = "change-me"


def parse_args(args: dict | None) -> tuple[ReplicaConfig, ServerSettings, ScaleSettings]:
    """What each replica loads, what the endpoint accepts, how many replicas: from the builder's ``args``."""
    args = dict(args or {})
    unknown = sorted(set(args) - set(ARGS))
    if unknown:
        raise RequestError(f"Unknown argument(s) {', '.join(unknown)}; known: {', '.join(ARGS)}.")
    value = {**ARGS, **args}
    api_key = value["api_key"] or os.environ.get("OMNI_APP_API_KEY") or None
    if api_key == EXAMPLE_API_KEY:
        raise RequestError(f'The API key is still the example "{EXAMPLE_API_KEY}" of deploy/ray-serve.yaml: '
                           "put a secret of your own in OMNI_APP_API_KEY there (anyone could use this one).")
    number = _Numbers(value)
    voices_dir = value["voices_dir"]
    replica = ReplicaConfig(model=str(value["model"]), device=str(value["device"]), dtype=str(value["dtype"]),
                            engine=str(value["engine"]),
                            voices_dir=os.path.abspath(voices_dir) if voices_dir else None,
                            warmup=number.flag("warmup"), session_cache_mb=number.whole("session_cache_mb"),
                            max_batch=number.whole("max_batch"))
    max_body = number.real("max_body_mb")
    settings = ServerSettings(
        limits=GenerationLimits(max_new_tokens=number.whole("max_new_tokens"),
                                max_speech_seconds=number.real("max_speech_seconds")),
        media=MediaLimits(), api_key=api_key,
        max_active=number.whole("max_active"), max_body_bytes=None if max_body is None else int(max_body * 1e6),
    )
    scale = ScaleSettings(replicas=number.whole("replicas"), min_replicas=number.whole("min_replicas"),
                          max_replicas=number.whole("max_replicas"),
                          # A replica is full when its batch is: the autoscaler aims for that by default.
                          target_ongoing=number.real("target_ongoing") or float(replica.max_batch),
                          cpus_per_replica=number.real("cpus_per_replica"),
                          gpus_per_replica=number.real("gpus_per_replica"))
    return replica, settings, scale


class _Numbers:
    """Typed values from arguments that may arrive as strings."""

    def __init__(self, values: dict) -> None:
        self._values = values

    def whole(self, key: str) -> int | None:
        return self._convert(key, int)

    def real(self, key: str) -> float | None:
        return self._convert(key, float)

    def flag(self, key: str) -> bool:
        value = self._values[key]
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise RequestError(f"{key} must be true or false, not {value!r}.")

    def _convert(self, key: str, kind):
        value = self._values[key]
        if value is None or value == "":
            return None
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise RequestError(f"{key} must be a number, not {value!r}.") from None
