"""Launch the omni_app web app: ``python app.py [--model M] [--port P] ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from omni_app.cli import add_model_options, quiet_libraries
from omni_app.config import GenerationLimits, MediaLimits, ServiceConfig
from omni_app.errors import OmniError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The omni_app web app for Qwen2.5-Omni.")
    add_model_options(parser)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")
    parser.add_argument("--max-new-tokens", type=int, default=GenerationLimits.max_new_tokens,
                        help="longest reply in text tokens (default: %(default)s)")
    parser.add_argument("--max-speech-seconds", type=float, default=GenerationLimits.max_speech_seconds,
                        help="longest spoken reply (default: %(default)s)")
    parser.add_argument("--queue-size", type=int, default=20, help="requests that may wait for the model")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up request at start")
    parser.add_argument("--voices-dir", type=Path, help="folder of custom voices: loaded at start, and where the "
                        "voice-cloning tab can save new ones")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    logging.getLogger("omni_app").setLevel(logging.INFO)
    try:
        limits = GenerationLimits(max_new_tokens=args.max_new_tokens, max_speech_seconds=args.max_speech_seconds)
        config = ServiceConfig(model=args.model, device=args.device, dtype=args.dtype, engine=args.engine)
        from omni_app.engine.service import ModelService

        print(f"omni_app: loading {config.model} ...", flush=True)
        service = ModelService.from_config(config)
    except OmniError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if service.loaded.is_tiny:
        print("omni_app: the tiny test model is loaded: its replies are random noise "
              "(no GPU found, or --model tiny). Use --model Qwen/Qwen2.5-Omni-7B on a GPU for real answers.",
              flush=True)
    if args.voices_dir is not None:
        from omni_app.voices import load_voice_folder

        voices, problems = load_voice_folder(args.voices_dir)
        for problem in problems:
            print(f"omni_app: warning: {problem} It was skipped.", file=sys.stderr)
        try:
            service.add_voices(voices)
        except OmniError as exc:
            print(f"omni_app: warning: {exc}", file=sys.stderr)
        print(f"omni_app: {len(voices)} custom voice(s) from {args.voices_dir}", flush=True)
    if not args.no_warmup:
        service.warmup()
    from omni_app.ui.app import CSS, build_app
    from omni_app.ui.reply import Backend

    demo = build_app(Backend(service, limits, MediaLimits(), voices_dir=args.voices_dir))
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
