"""Many people talking to one endpoint at once: what each of them hears, for K = 1, 2, 4, 8 users.

    python bench/load.py --quick                            # starts `python -m omni_app serve` (tiny) itself
    python bench/load.py --quick --start ray --replicas 2   # ... or Ray Serve with 2 replicas
    python bench/load.py --url http://gpu-box:8000 --api-key KEY          # any running endpoint
    python bench/load.py --url http://gpu-box:8091 --dialect vllm-omni    # vLLM-Omni
    python bench/load.py --compare-batch [--quick]          # serve --max-batch 1, then 8, side by side

Each simulated user is a RemoteBackend (its own connection, as an app in front would
have): it asks a spoken question (espeak-ng) and reads the streamed text and speech as
the app does, ``--rounds`` times back to back. First every user's request is asked once
alone; then for each K, K users ask at the same time. One line per K:

  ttfa      time to first audio, from sending (a wait in the queue included), p50 / p95
  underrun  silence a listener hears playing the chunks in real time from the first, p50 / p95
  replies/min, errors, and cross_talk: replies that differ (text or speech) from what the
  same request and seed gave alone

then ``users=K replicas=R ttfa_p95=... underrun_p95=... errors=E cross_talk=C`` for the largest K.

With ``--compare-batch`` it starts ``serve`` twice in one run, one reply at a time
(``--max-batch 1``) and eight at once (``--max-batch 8``), asks both the same questions,
prints both rows for each K and ends with
``users=8 batch=8 replies_per_min=A (serial: B) ttfa_p95=X (serial: Y) underrun_p95=U errors=E cross_talk=C``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streaming import underrun  # noqa: E402  (bench/streaming.py)

from omni_app.api import Request  # noqa: E402
from omni_app.config import GenerationLimits  # noqa: E402
from omni_app.conversation import AudioPart, Conversation  # noqa: E402
from omni_app.events import AudioChunk, Done, TextDelta  # noqa: E402
from omni_app.media import load_audio  # noqa: E402
from omni_app.serve.remote import RemoteBackend  # noqa: E402

QUESTIONS = [
    "What is the weather like at sea today?", "Can you name three kinds of trees?",
    "How do I make a cup of tea?", "What time is it in Tokyo?", "Tell me a short joke.",
    "Why is the sky blue?", "What should I cook for dinner?", "How far away is the moon?",
]


def spoken_questions(count: int) -> list[np.ndarray]:
    """``count`` different spoken questions, 16 kHz, made with espeak-ng."""
    if shutil.which("espeak-ng") is None:
        sys.exit("bench/load.py needs espeak-ng for the spoken questions (scripts/setup.sh installs it)")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(count):
            wav = Path(tmp) / f"q{index}.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), QUESTIONS[index % len(QUESTIONS)]], check=True)
            out.append(load_audio(wav))
    return out


def measure(backend, request: Request) -> dict:
    """One reply, read as the app reads it: times from sending, chunk arrivals, and what was said."""
    started = time.perf_counter()
    arrivals: list[tuple[float, float]] = []
    text, audio, served_by = [], hashlib.sha1(), ""
    for event in backend.stream(request):
        now = time.perf_counter() - started
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, AudioChunk):
            arrivals.append((now, event.seconds))
            audio.update(np.ascontiguousarray(event.samples).tobytes())
        elif isinstance(event, Done):
            served_by = event.stats.served_by
    total = time.perf_counter() - started
    return {"ttfa": arrivals[0][0] if arrivals else total, "underrun": underrun(arrivals), "total": total,
            "speech": sum(s for _, s in arrivals), "reply": ("".join(text), audio.hexdigest()),
            "served_by": served_by}


def run_users(url: str, dialect: str, api_key: str | None, requests: list[Request], users: int,
              rounds: int) -> tuple[list[tuple[int, dict | Exception]], float]:
    """``users`` users at once, each asking its request ``rounds`` times; (user, result) and the wall time."""
    results: list = []
    lock = threading.Lock()
    start = threading.Barrier(users + 1)

    def user(index: int) -> None:
        backend = RemoteBackend(url, dialect=dialect, api_key=api_key)
        start.wait()
        for _ in range(rounds):
            try:
                outcome = measure(backend, requests[index])
            except Exception as exc:  # counted, and the user asks again
                outcome = exc
            with lock:
                results.append((index, outcome))

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - began


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def start_endpoint(kind: str, replicas: int, model: str, limits: GenerationLimits, log: Path,
                   extra: tuple[str, ...] = ()):
    """``python -m omni_app serve`` (with ``--ray --replicas R`` for ray) on a free port; (url, process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "omni_app", "serve", "--model", model, "--port", str(port),
               "--max-new-tokens", str(limits.max_new_tokens), "--max-speech-seconds", str(limits.max_speech_seconds)]
    if kind == "ray":
        command += ["--ray", "--replicas", str(replicas)]
    command += list(extra)
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 900
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"the endpoint exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return url, process
        except OSError:
            time.sleep(1)
    process.terminate()
    sys.exit(f"the endpoint did not start in 15 minutes:\n{log.read_text()[-3000:]}")


def replicas_of(url: str, fallback) -> str:
    import json

    try:
        with urllib.request.urlopen(url.rstrip("/").removesuffix("/v1") + "/health", timeout=5) as response:
            health = json.loads(response.read())
    except (OSError, ValueError):
        return str(fallback)
    if isinstance(health, dict) and health.get("server") == "omni_app":
        return str(health.get("replicas") or 1)
    return str(fallback)


def measure_endpoint(url: str, dialect: str, api_key: str | None, requests: list[Request], counts: list[int],
                     rounds: int, label: str = "") -> dict[int, dict]:
    """Every request alone (and a warm-up), then K users at once for each K; prints one row per K."""
    alone = {}
    backend = RemoteBackend(url, dialect=dialect, api_key=api_key)
    for index, request in enumerate(requests):
        alone[index] = measure(backend, request)
    alone_rtf = float(np.median([r["total"] / r["speech"] for r in alone.values() if r["speech"]] or [float("nan")]))
    rows = {}
    for users in counts:
        results, wall = run_users(url, dialect, api_key, requests, users, rounds)
        done = [(i, r) for i, r in results if not isinstance(r, Exception)]
        errors = [r for _, r in results if isinstance(r, Exception)]
        cross = sum(r["reply"] != alone[i]["reply"] for i, r in done)
        row = {"replies": len(done), "errors": len(errors), "cross": cross,
               "ttfa": [r["ttfa"] for _, r in done], "under": [r["underrun"] for _, r in done],
               "per_min": len(done) / wall * 60, "used": len({r["served_by"] for _, r in done if r["served_by"]}),
               "alone_rtf": alone_rtf}
        rows[users] = row
        print(f"{label:>7}{users:5d} {row['replies']:7d} {row['errors']:6d} {row['cross']:5d} "
              f"{percentile(row['ttfa'], 50):9.3f} {percentile(row['ttfa'], 95):9.3f} "
              f"{percentile(row['under'], 50):9.3f} {percentile(row['under'], 95):9.3f} "
              f"{row['per_min']:11.1f} {row['used'] or '-':>13}", flush=True)
        for error in errors[:3]:
            print(f"      error: {type(error).__name__}: {str(error)[:200]}", flush=True)
    return rows


HEADER = (f"{'users':>5} {'replies':>7} {'errors':>6} {'cross':>5} {'ttfa_p50':>9} {'ttfa_p95':>9} "
          f"{'under_p50':>9} {'under_p95':>9} {'replies/min':>11} {'replicas_used':>13}")


def stop_endpoint(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def compare_batch(args, limits: GenerationLimits, counts: list[int], requests: list[Request]) -> int:
    """``serve`` with one reply at a time, then with eight at once: the same questions, side by side."""
    results = {}
    for batch in (1, 8):
        log = Path(tempfile.mkdtemp(prefix="omni-load-")) / "endpoint.log"
        print(f"starting serve --max-batch {batch} (log in {log}) ...", flush=True)
        url, process = start_endpoint("local", 1, args.model, limits, log, ("--max-batch", str(batch)))
        try:
            if batch == 1:
                print(f"{'batch':>7}{HEADER}", flush=True)
            results[batch] = measure_endpoint(url, args.dialect, args.api_key, requests, counts, args.rounds,
                                              label=f"{batch}  ")
        finally:
            stop_endpoint(process)
    users = max(counts)
    serial, batched = results[1][users], results[8][users]
    print(f"alone: real-time factor {batched['alone_rtf']:.2f} (generation time / speech)", flush=True)
    print(f"users={users} batch=8 replies_per_min={batched['per_min']:.1f} (serial: {serial['per_min']:.1f}) "
          f"ttfa_p95={percentile(batched['ttfa'], 95):.3f} (serial: {percentile(serial['ttfa'], 95):.3f}) "
          f"underrun_p95={percentile(batched['under'], 95):.3f} errors={batched['errors']} "
          f"cross_talk={batched['cross']}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="an endpoint that is running (ours, Ray Serve, vLLM-Omni)")
    where.add_argument("--start", choices=["local", "ray"], default="local",
                       help="start the endpoint here: python -m omni_app serve, or with --ray (default: local)")
    where.add_argument("--compare-batch", action="store_true",
                       help="start serve with --max-batch 1 and with --max-batch 8, one after the other")
    parser.add_argument("--replicas", type=int, default=2, help="with --start ray (default: %(default)s)")
    parser.add_argument("--model", default="tiny", help="with --start (default: tiny)")
    parser.add_argument("--dialect", default="auto", choices=["auto", "openai", "vllm-omni"])
    parser.add_argument("--api-key", default=os.environ.get("OMNI_APP_API_KEY"))
    parser.add_argument("--users", default="1,2,4,8", help="numbers of users at once (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="requests per user and K (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-speech-seconds", type=float, default=4.0)
    parser.add_argument("--quick", action="store_true", help="1 round, 24 tokens and 1.5 s of speech per reply")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.max_new_tokens, args.max_speech_seconds = 1, 24, 1.5
    counts = sorted({int(k) for k in args.users.split(",")})
    limits = GenerationLimits(max_new_tokens=args.max_new_tokens, max_speech_seconds=args.max_speech_seconds)
    questions = spoken_questions(max(counts))
    requests = [Request(Conversation().add_user(AudioPart(q)), voice="Chelsie", limits=limits, seed=index,
                        session=f"load-user-{index}") for index, q in enumerate(questions)]
    if args.compare_batch:
        return compare_batch(args, limits, counts, requests)

    process = None
    if args.url:
        url, replicas = args.url, replicas_of(args.url, "?")
    else:
        log = Path(tempfile.mkdtemp(prefix="omni-load-")) / "endpoint.log"
        print(f"starting the endpoint ({args.start}{f', {args.replicas} replicas' if args.start == 'ray' else ''}, "
              f"log in {log}) ...", flush=True)
        url, process = start_endpoint(args.start, args.replicas, args.model, limits, log)
        replicas = str(args.replicas if args.start == "ray" else 1)
    try:
        info = RemoteBackend(url, dialect=args.dialect, api_key=args.api_key).info
        print(f"endpoint {url} ({info.description}), replicas={replicas}; {args.rounds} round(s) per user, "
              f"{limits.max_new_tokens} tokens and {limits.max_speech_seconds:g} s of speech at most per reply",
              flush=True)
        print(HEADER, flush=True)
        rows = measure_endpoint(url, args.dialect, args.api_key, requests, counts, args.rounds)
        users = max(counts)
        row = rows[users]
        print(f"alone: real-time factor {row['alone_rtf']:.2f} (generation time / speech)", flush=True)
        print(f"users={users} replicas={replicas} ttfa_p95={percentile(row['ttfa'], 95):.3f} "
              f"underrun_p95={percentile(row['under'], 95):.3f} errors={row['errors']} cross_talk={row['cross']}",
              flush=True)
    finally:
        if process is not None:
            stop_endpoint(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
