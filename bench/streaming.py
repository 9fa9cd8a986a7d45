"""Streaming vs reference engine, side by side in one run.

    python bench/streaming.py            # tiny model, 5 runs per engine and request
    python bench/streaming.py --quick    # under a minute on the tiny model
    python bench/streaming.py --real-size 7B   # random weights at the real size (GPU)

The same requests go through both engines, alternating. It prints the medians, the
streaming engine's time per stage (Thinker, Talker, code2wav) and ends with these lines:
  ttfa_ratio    = streaming time to first audio / reference total time (the reference's
                  first audio is its end)
  total_ratio   = streaming total time / reference total time
  underrun_s    = seconds of silence a listener would hear playing the streamed chunks in
                  real time from the first one (worst request, median over runs)
  rtf_streaming = the streaming engine's real-time factor: generation time / seconds of
                  speech (worst request, median over runs; below 1 is faster than real time)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni_app.api import Request  # noqa: E402
from omni_app.config import GenerationLimits, ServiceConfig  # noqa: E402
from omni_app.conversation import AudioPart, Conversation  # noqa: E402
from omni_app.engine.reference import ReferenceEngine  # noqa: E402
from omni_app.engine.service import ModelService  # noqa: E402
from omni_app.engine.streaming import StreamingEngine  # noqa: E402
from omni_app.events import AudioChunk, Done, TextDelta  # noqa: E402
from omni_app.media import load_audio  # noqa: E402


def measure(service: ModelService, request: Request) -> dict:
    """Run one request; times are seconds from the call, chunk arrivals included."""
    started = time.perf_counter()
    first_text = None
    arrivals: list[tuple[float, float]] = []
    done = None
    for event in service.stream(request):
        now = time.perf_counter() - started
        if isinstance(event, TextDelta) and first_text is None:
            first_text = now
        elif isinstance(event, AudioChunk):
            arrivals.append((now, event.seconds))
        elif isinstance(event, Done):
            done = event
    total = time.perf_counter() - started
    return {
        "ttft": first_text if first_text is not None else total,
        "ttfa": arrivals[0][0] if arrivals else total,
        "total": total,
        "audio_s": sum(d for _, d in arrivals),
        "underrun": underrun(arrivals),
        "chunks": len(arrivals),
        "extra": done.stats.extra if done else {},
    }


def underrun(arrivals: list[tuple[float, float]]) -> float:
    """Silence heard when chunks are played back-to-back from the first arrival."""
    if not arrivals:
        return 0.0
    clock = arrivals[0][0]
    silent = 0.0
    for arrived, seconds in arrivals:
        if arrived > clock:
            silent += arrived - clock
            clock = arrived
        clock += seconds
    return silent


def requests(limits: GenerationLimits) -> dict[str, Request]:
    """A typed question and, where espeak-ng exists, a spoken one."""
    found = {"text": Request(Conversation().add_user("Tell me about the sea in a few sentences."),
                             voice="Chelsie", limits=limits, seed=1)}
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "q.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), "What is the weather like at sea today?"], check=True)
            audio = load_audio(wav)
        found["spoken"] = Request(Conversation().add_user(AudioPart(audio)), voice="Chelsie", limits=limits, seed=1)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 runs per engine and request")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default="tiny", help="checkpoint id or folder (default: tiny)")
    parser.add_argument("--real-size", choices=["3B", "7B"], help="random weights at the real size (needs a GPU)")
    parser.add_argument("--layers", type=int, help="with --real-size: fewer layers, for a quick smoke check")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--speech-seconds", type=float, default=6.0,
                        help="speech per reply; the tiny model's random Talker always runs to this limit")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    runs = 2 if args.quick else args.runs

    started = time.perf_counter()
    if args.real_size:
        from realsize import random_real_size_model

        loaded = random_real_size_model(args.real_size, args.device, args.layers)
    else:
        from omni_app.engine.loader import load_model

        loaded = load_model(args.model, device=args.device)
    print(f"model: {loaded.name} on {loaded.device} ({loaded.dtype}), loaded in {time.perf_counter() - started:.1f} s")
    engines = {"reference": ModelService(loaded, ReferenceEngine()),
               "streaming": ModelService(loaded, StreamingEngine(ServiceConfig.chunk_blocks))}
    limits = GenerationLimits(max_new_tokens=args.max_new_tokens, max_speech_seconds=args.speech_seconds)
    todo = requests(limits)
    for service in engines.values():  # warm-up: first calls pay for lazy initialisation
        measure(service, next(iter(todo.values())))

    results = {(e, r): [] for e in engines for r in todo}
    for _ in range(runs):
        for name, request in todo.items():
            for engine, service in engines.items():
                results[(engine, name)].append(measure(service, request))

    med = {key: {m: statistics.median(r[m] for r in rows) for m in ("ttft", "ttfa", "total", "audio_s", "underrun")}
           for key, rows in results.items()}
    print(f"\n{'request':10} {'engine':10} {'ttft_s':>8} {'ttfa_s':>8} {'total_s':>8} {'audio_s':>8} "
          f"{'underrun':>9} {'rtf':>6}")
    for (engine, name), m in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rtf = m["total"] / m["audio_s"] if m["audio_s"] else float("nan")
        print(f"{name:10} {engine:10} {m['ttft']:8.3f} {m['ttfa']:8.3f} {m['total']:8.3f} {m['audio_s']:8.2f} "
              f"{m['underrun']:9.3f} {rtf:6.2f}")
    for name in todo:
        runs_of = results[("streaming", name)]
        split = {stage: statistics.median(r["extra"].get(f"{stage}_seconds", 0.0) for r in runs_of)
                 for stage in ("thinker", "talker", "code2wav")}
        spent = sum(split.values()) or 1.0
        print(f"streaming stages, {name} (median s): " + ", ".join(
            f"{stage} {seconds:.3f} ({100 * seconds / spent:.0f} %)" for stage, seconds in split.items()))
    ttfa = max(med[("streaming", r)]["ttfa"] / med[("reference", r)]["total"] for r in todo)
    total = max(med[("streaming", r)]["total"] / med[("reference", r)]["total"] for r in todo)
    worst = max(med[("streaming", r)]["underrun"] for r in todo)
    print(f"ttft_streaming_s={max(med[('streaming', r)]['ttft'] for r in todo):.3f}")
    print(f"ttft_reference_s={max(med[('reference', r)]['ttft'] for r in todo):.3f}")
    print(f"ttfa_ratio={ttfa:.3f}")
    print(f"total_ratio={total:.3f}")
    print(f"underrun_s={worst:.3f}")
    rtf = max(med[("streaming", r)]["total"] / med[("streaming", r)]["audio_s"] for r in todo)
    print(f"rtf_streaming={rtf:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
