"""In process vs through ``python -m omni_app serve``: the same requests, side by side in one run.

    python bench/serve.py              # tiny model, 5 runs per path and request
    python bench/serve.py --quick      # 2 runs
    python bench/serve.py --model Qwen/Qwen2.5-Omni-7B   # on a GPU

One model is loaded once; the server (uvicorn, on a free local port) serves that same
model, so both paths run the same generation. The requests alternate between the
LocalBackend and a RemoteBackend that talks to the server over HTTP, and every time is
measured at the caller. It prints the medians and ends with:
  ttfa_ratio  = time to first audio through the server / in process
  ttft_ratio  = time to first text through the server / in process
  total_ratio = total time through the server / in process
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni_app.api import Request  # noqa: E402
from omni_app.config import GenerationLimits, ServiceConfig  # noqa: E402
from omni_app.conversation import Conversation  # noqa: E402
from omni_app.engine.local import LocalBackend  # noqa: E402
from omni_app.events import AudioChunk, TextDelta  # noqa: E402
from omni_app.serve.remote import RemoteBackend  # noqa: E402
from omni_app.serve.server import make_app  # noqa: E402

PROMPTS = ["Tell me about the sea.", "What is a good name for a cat?"]


def measure(backend, request: Request) -> dict:
    started = time.perf_counter()
    first_text = first_audio = None
    for event in backend.stream(request):
        now = time.perf_counter() - started
        if isinstance(event, TextDelta) and first_text is None:
            first_text = now
        elif isinstance(event, AudioChunk) and first_audio is None:
            first_audio = now
    total = time.perf_counter() - started
    return {"ttft": first_text or total, "ttfa": first_audio or total, "total": total}


def start_server(backend: LocalBackend) -> tuple[str, object]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(backend), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 runs per path and request")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-speech-seconds", type=float, default=2.0)
    args = parser.parse_args()
    runs = 2 if args.quick else args.runs

    local = LocalBackend.from_config(ServiceConfig(model=args.model))
    local.warmup()
    url, server = start_server(local)
    remote = RemoteBackend(url)
    limits = GenerationLimits(max_new_tokens=args.max_new_tokens, max_speech_seconds=args.max_speech_seconds)
    results: dict[str, list[dict]] = {"local": [], "served": []}
    for run in range(runs):
        for index, prompt in enumerate(PROMPTS):
            request = Request(Conversation().add_user(prompt), voice="Chelsie", limits=limits, seed=run * 10 + index)
            # Alternate which path goes first, so neither always runs on a warmer machine.
            order = [("local", local), ("served", remote)] if (run + index) % 2 == 0 else [
                ("served", remote), ("local", local)]
            for name, backend in order:
                results[name].append(measure(backend, request))
    server.should_exit = True

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"model {args.model}, {runs} runs x {len(PROMPTS)} requests per path, "
          f"{args.max_new_tokens} tokens, {args.max_speech_seconds} s of speech at most")
    print(f"{'path':8} {'first text':>11} {'first audio':>12} {'total':>8}   (median seconds)")
    for name in results:
        print(f"{name:8} {median(name, 'ttft'):11.3f} {median(name, 'ttfa'):12.3f} {median(name, 'total'):8.3f}")
    for key, label in (("ttfa", "ttfa_ratio"), ("ttft", "ttft_ratio"), ("total", "total_ratio")):
        print(f"{label} = {median('served', key) / median('local', key):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
