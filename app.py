"""Launch the omni_app web app: ``python app.py [--model M] [--port P] ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from omni_app.cli import add_backend_options, open_backend, quiet_libraries
from omni_app.config import MAX_ACTIVE, QUEUE_SIZE, TABS, GenerationLimits, MediaLimits, check_tabs
from omni_app.errors import OmniError, RequestError
from omni_app.vad import VadOptions

#: Replies an app in front of a model server asks for at once (the server's --max-active, by default).
REMOTE_CONCURRENCY = MAX_ACTIVE


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The omni_app web app for Qwen2.5-Omni.")
    add_backend_options(parser)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")
    parser.add_argument("--max-new-tokens", type=int, default=GenerationLimits.max_new_tokens,
                        help="longest reply in text tokens (default: %(default)s)")
    parser.add_argument("--max-speech-seconds", type=float, default=GenerationLimits.max_speech_seconds,
                        help="longest spoken reply (default: %(default)s)")
    parser.add_argument("--vad-silence-ms", type=int, default=VadOptions.min_silence_ms,
                        help="pause that ends a spoken turn, in ms; users can change it in the chat tabs "
                             "(default: %(default)s)")
    parser.add_argument("--queue-size", type=int, default=QUEUE_SIZE,
                        help="requests that may wait for the model (default: %(default)s)")
    parser.add_argument("--concurrent-replies", type=int, help="replies this app asks for at once (default: the "
                        f"model's --max-batch with the model in this process; {REMOTE_CONCURRENCY} with --backend, "
                        "whose server queues them and tells each its place: one app in front of several replicas "
                        "uses them all)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up request at start")
    parser.add_argument("--tabs", default=",".join(TABS),
                        help="the tabs to show, comma-separated, among %(default)s (default: all)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    logging.getLogger("omni_app").setLevel(logging.INFO)
    try:
        if args.concurrent_replies is not None and args.concurrent_replies < 1:
            raise RequestError("--concurrent-replies must be at least 1.")
        limits = GenerationLimits(max_new_tokens=args.max_new_tokens, max_speech_seconds=args.max_speech_seconds)
        vad = VadOptions(min_silence_ms=args.vad_silence_ms)
        tabs = check_tabs(args.tabs.split(","), "--tabs")
        backend = open_backend(args, warmup=not args.no_warmup)
    except OmniError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from omni_app.ui.launch import serve_page

    # A model in this process makes a batch of replies at once; a model server queues replies
    # itself and tells each its place, so an app in front of it asks for many at once.
    concurrency = args.concurrent_replies or (REMOTE_CONCURRENCY if args.backend else backend.info.max_batch or 1)
    serve_page(backend, limits, MediaLimits(), tabs=tabs, concurrency=concurrency, queue_size=args.queue_size,
               vad=vad, server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
