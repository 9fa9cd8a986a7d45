"""Replies through ZeroGPU's own wrapper, run under ``tests/zerogpu_emulator.py``; writes what happened as JSON.

``python tests/zerogpu_emulator.py tests/zerogpu_checks.py OUT.json``. tests/test_zerogpu.py
runs it once and checks each part.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request


def main(out_path: str) -> None:
    import numpy as np

    from omni_app.api import CancelToken, Request
    from omni_app.config import GenerationLimits, ServiceConfig
    from omni_app.conversation import Conversation
    from omni_app.engine.local import LocalBackend
    from omni_app.events import AudioChunk, Done, TextDelta
    from omni_app.voices import Voice
    from omni_app.zerogpu import GpuBudget

    api = os.environ["ZEROGPU_EMULATOR_URL"]
    backend = LocalBackend.from_config(ServiceConfig(model="tiny"), gpu=GpuBudget(cap=90))
    short = GenerationLimits(max_new_tokens=12, max_speech_seconds=1.0)
    report: dict = {"in_process": backend._gpu.in_process, "parent": os.getpid()}

    def ask(text: str, limits=short, voice="Chelsie", cancel=None, after=None):
        events, kinds = [], []
        started = time.perf_counter()
        try:
            for event in backend.stream(Request(Conversation().add_user(text), voice=voice, limits=limits,
                                                seed=1), cancel):
                events.append(event)
                kinds.append(type(event).__name__)
                if after is not None:
                    after(event)
        except Exception as exc:
            return {"error": type(exc).__name__, "message": str(exc), "kinds": kinds}
        done = events[-1] if events and isinstance(events[-1], Done) else None
        return {"kinds": kinds, "reason": done.reason if done else None, "seconds": time.perf_counter() - started,
                "text": "".join(e.text for e in events if isinstance(e, TextDelta)),
                "audio_samples": sum(len(e.samples) for e in events if isinstance(e, AudioChunk)),
                "tokens": done.stats.text_tokens if done else None}

    report["reply"] = ask("Hello there")
    report["spoken_then_text_only"] = ask("And once more without speech", voice=None)

    long = GenerationLimits(max_new_tokens=400, max_speech_seconds=8.0)
    cancel = CancelToken()
    report["stop"] = ask("Tell me a long story", limits=long, cancel=cancel,
                         after=lambda e: cancel.cancel() if isinstance(e, TextDelta) else None)
    report["after_stop"] = ask("Are you still there?")

    try:
        list(backend.stream(Request(voice="Chelsie", speak_text="   ")))
        report["worker_error"] = {"error": None}
    except Exception as exc:
        report["worker_error"] = {"error": type(exc).__name__, "message": str(exc)}

    # A voice whose speaker vector has the wrong size: the model itself fails, in the worker.
    good = backend.service.voice("Chelsie")
    broken = Voice("Broken", good.bos_token, np.zeros((1, 7), np.float32), good.ref_mel, base="Chelsie")
    report["crash"] = ask("Speak in the broken voice", voice=backend.service.add_custom_voice(broken))
    report["after_crash"] = ask("Still working?")

    urllib.request.urlopen(urllib.request.Request(f"{api}/emulator/mode?value=quota", method="POST"))
    report["quota"] = ask("One more, please")
    urllib.request.urlopen(urllib.request.Request(f"{api}/emulator/mode?value=ok", method="POST"))

    with urllib.request.urlopen(f"{api}/emulator/calls") as answer:
        report["calls"] = json.load(answer)
    report["gpu_seconds_asked"] = [int(c["durationSeconds"]) for c in report["calls"] if c["path"] == "/schedule"]
    report["allowed_pids"] = sorted({int(c["pid"]) for c in report["calls"] if c["path"] == "/allow"})
    # The contract every backend keeps (tests/contract.py); calls within one GPU worker don't queue.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from contract import run_contract

    report["contract"] = run_contract(backend)
    with open(out_path, "w") as handle:
        json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
