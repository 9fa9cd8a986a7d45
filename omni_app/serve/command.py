"""``python -m omni_app serve``: load the model once, warm it up, serve the API with uvicorn.

Its options are defined with the other commands' in :mod:`omni_app.cli`.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

from ..config import GenerationLimits, MediaLimits


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (then no key is needed)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args, open_backend) -> int:
    """Load (or reach) the model with ``open_backend`` (the CLI's), warm it up once, serve until interrupted."""
    import logging

    import uvicorn

    from .server import ServerSettings, make_app

    settings = ServerSettings(
        limits=GenerationLimits(max_new_tokens=args.max_new_tokens, max_speech_seconds=args.max_speech_seconds),
        media=MediaLimits(), api_key=args.api_key or None, max_active=args.max_active,
        max_body_bytes=None if args.max_body_mb is None else int(args.max_body_mb * 1e6),
    )
    # open_backend reads the remote server's key from ``api_key``; ours is the one clients send.
    backend_args = SimpleNamespace(**{**vars(args), "api_key": args.backend_api_key})
    # The log keeps what a client's error message only refers to (see omni_app.errors).
    logging.getLogger("omni_app").setLevel(logging.INFO)
    backend = open_backend(backend_args, warmup=False)
    if not args.no_warmup:
        print("omni_app: warming up ...", flush=True)
        backend.warmup()
    if not is_loopback(args.host) and not settings.api_key:
        print(f"omni_app: warning: listening on {args.host} without an API key: anyone who can reach this port can "
              "use the model. Set --api-key (or OMNI_APP_API_KEY).", file=sys.stderr, flush=True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"omni_app: serving {backend.info.model} at http://{host}:{args.port}/v1 (OpenAI-compatible; "
          f"health at /health)", flush=True)
    uvicorn.run(make_app(backend, settings), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=5)
    return 0
