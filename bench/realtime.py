"""People talking to ``WS /v1/realtime`` at once: how soon each hears the answer, for K = 1, 2, 4, 8 connections.

    python bench/realtime.py --quick                      # starts `python -m omni_app serve` (tiny) itself
    python bench/realtime.py --url http://gpu-box:8000 --api-key KEY   # any running endpoint

Each connection is the ``openai`` package's realtime client. It speaks a question (espeak-ng)
at real-time pace, in 20-40 ms appends, then silence, and lets the server's turn detection
end the turn. Measured per reply: from the last appended audio that holds speech to the first
``response.output_audio.delta`` (turn detection's pause included: that is what a person
waits), and the silence heard playing the speech in real time from its first delta
(underrun). One line per K, then

  connections=K speech_end_to_audio_p50=... p95=... underrun_p95=... errors=E
"""

from __future__ import annotations

import argparse
import base64
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import percentile, spoken_questions, start_endpoint  # noqa: E402
from streaming import underrun  # noqa: E402

from omni_app.config import GenerationLimits  # noqa: E402

RATE = 24000


def to_24k(audio_16k: np.ndarray) -> np.ndarray:
    import librosa

    return np.round(librosa.resample(audio_16k, orig_sr=16000, target_sr=RATE) * 32767).astype(np.int16)


def converse(url: str, key: str, question: np.ndarray, silence_ms: int, seed: int) -> dict:
    """One spoken turn over one connection, at real-time pace; what the person waited and heard."""
    from openai import OpenAI

    rng = random.Random(seed)
    client = OpenAI(base_url=f"{url}/v1", api_key=key or "none")
    arrivals: list[tuple[float, float]] = []
    with client.realtime.connect(model="tiny") as conn:
        conn.recv()  # session.created
        conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": silence_ms}}}})
        done = threading.Event()
        result: dict = {}

        def read() -> None:
            try:
                while True:
                    event = conn.recv()
                    now = time.perf_counter()
                    if event.type == "response.output_audio.delta":
                        arrivals.append((now, len(base64.b64decode(event.delta)) / 2 / RATE))
                    elif event.type == "response.done":
                        result["status"] = event.response.status
                        return
                    elif event.type == "error":
                        result["error"] = event.error.message
                        return
            except Exception as exc:  # noqa: BLE001 - counted as an error
                result["error"] = repr(exc)
            finally:
                done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        audio = np.concatenate([question, np.zeros(RATE * 3, np.int16)])
        speech_end = None
        start, began = 0, time.perf_counter()
        while start < len(audio) and not done.is_set() and not arrivals:
            step = RATE * rng.choice((20, 30, 40)) // 1000
            conn.input_audio_buffer.append(audio=base64.b64encode(audio[start:start + step].tobytes()).decode())
            start += step
            if start >= len(question) and speech_end is None:
                speech_end = time.perf_counter()
            # Real-time pace: never ahead of the clock.
            time.sleep(max(0.0, began + start / RATE - time.perf_counter()))
        done.wait(300)
    if "error" in result or not arrivals:
        return {"error": result.get("error", "no audio")}
    return {"wait": arrivals[0][0] - speech_end, "underrun": underrun(arrivals), "status": result.get("status")}


def run(url: str, key: str, counts: list[int], questions: list[np.ndarray], silence_ms: int) -> list[str]:
    lines = []
    for k in counts:
        results: list[dict] = [{} for _ in range(k)]

        def one(index: int, out=results) -> None:
            out[index] = converse(url, key, questions[index % len(questions)], silence_ms, index)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
        for thread in threads:
            thread.start()
            time.sleep(0.1)  # people do not start talking on the same millisecond
        for thread in threads:
            thread.join(600)
        ok = [r for r in results if "wait" in r]
        errors = len(results) - len(ok)
        waits, gaps = [r["wait"] for r in ok], [r["underrun"] for r in ok]
        line = (f"connections={k} speech_end_to_audio_p50={percentile(waits, 50):.2f} "
                f"p95={percentile(waits, 95):.2f} underrun_p95={percentile(gaps, 95):.2f} errors={errors}")
        print(line, flush=True)
        for r in results:
            if "error" in r:
                print(f"  error: {r['error']}", flush=True)
        lines.append(line)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running endpoint (default: start `serve` with the tiny model here)")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--users", default="1,2,4,8", help="connections at once, comma-separated")
    parser.add_argument("--quick", action="store_true", help="short replies (16 tokens, 4 s of speech)")
    parser.add_argument("--silence-ms", type=int, default=500, help="the pause that ends a turn (server_vad)")
    args = parser.parse_args()
    counts = [int(k) for k in args.users.split(",")]
    questions = [to_24k(q) for q in spoken_questions(max(counts))]
    process = None
    url = args.url
    if url is None:
        limits = GenerationLimits(16, 4.0) if args.quick else GenerationLimits(64, 8.0)
        log = Path(tempfile.mkdtemp()) / "serve.log"
        url, process = start_endpoint("local", 1, "tiny", limits, log)
        print(f"serve (tiny, {limits.max_new_tokens} tokens, {limits.max_speech_seconds:g} s of speech) at {url}",
              flush=True)
    try:
        converse(url, args.api_key, questions[0], args.silence_ms, 0)  # warm: the first turn loads VAD and caches
        run(url, args.api_key, counts, questions, args.silence_ms)
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
