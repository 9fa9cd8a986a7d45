"""ZeroGPU: GPU time sized per request, the model placed on cuda at start, and replies through the
``spaces`` package's own wrapper in its own worker process (tests/zerogpu_emulator.py says what
is emulated and what can't be)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from omni_app.api import Request
from omni_app.config import GenerationLimits
from omni_app.conversation import AudioPart, Conversation, ImagePart, VideoPart
from omni_app.errors import GpuUnavailable
from omni_app.media import VideoClip
from omni_app.zerogpu import GpuBudget, zerogpu_error

ROOT = Path(__file__).resolve().parents[1]
EMULATOR = ROOT / "tests" / "zerogpu_emulator.py"


def video(seconds: float) -> VideoPart:
    return VideoPart(VideoClip(np.zeros((int(seconds * 2), 28, 28, 3), np.uint8), 2.0))


def test_gpu_time_grows_with_the_request_within_the_cap():
    budget = GpuBudget(cap=120)
    limits = GenerationLimits(max_new_tokens=64, max_speech_seconds=10)
    text = budget.seconds_for(Request(Conversation().add_user("Hi"), voice=None, limits=limits))
    spoken = budget.seconds_for(Request(Conversation().add_user("Hi"), limits=limits))
    longer = budget.seconds_for(Request(Conversation().add_user("Hi"), limits=GenerationLimits(256, 40)))
    with_video = budget.seconds_for(Request(Conversation().add_user(video(30), "Hi"), limits=limits))
    with_media = budget.seconds_for(Request(Conversation().add_user(
        AudioPart(np.zeros(16000 * 20, np.float32)), ImagePart(object()), "Hi"), limits=limits))
    assert text < spoken < longer and spoken < with_video and spoken < with_media
    assert budget.seconds_for(Request(speak_text="A sentence. " * 50)) > budget.seconds_for(Request(speak_text="Hi."))
    huge = Request(Conversation().add_user(video(120), "Hi"), limits=GenerationLimits(4096, 600))
    assert budget.seconds_for(huge) == 120 and GpuBudget(cap=45).seconds_for(huge) == 45


def test_zerogpu_refusals_become_messages_a_visitor_can_act_on():
    from spaces.zero.gradio import error  # how the spaces package makes them

    spent = zerogpu_error(error("ZeroGPU quota exceeded", "You have exceeded your free ZeroGPU quota (60s "
                                "requested vs. 12s left). Try again in 0:12:34. "))
    assert isinstance(spent, GpuUnavailable) and "run out for now" in str(spent) and "0:12:34" in str(spent)
    anonymous = str(zerogpu_error(error("ZeroGPU quota exceeded", "Space app has reached its GPU limit. Try "
                                        "re-running outside of examples if it happened after clicking one")))
    assert "outside of examples" not in anonymous and "Try again later" in anonymous
    assert "shorter reply" in str(zerogpu_error(error("ZeroGPU illegal duration", "The requested GPU duration "
                                                      "(400s) is larger than the maximum allowed")))
    assert "Try again in a minute" in str(zerogpu_error(error("ZeroGPU client error", "No GPU was available")))
    assert "GPU worker stopped" in str(zerogpu_error(error("ZeroGPU worker error", "GPU task aborted")))
    other = ValueError("not ZeroGPU's")
    assert zerogpu_error(other) is other


def test_the_model_is_placed_on_cuda_at_start_under_zerogpus_emulation():
    # The real spaces package with its CUDA emulation: what a ZeroGPU Space does at start.
    code = """if True:
        import json, os
        os.environ.update(SPACES_ZERO_GPU="true", SPACES_ZERO_DEVICE_API_URL="http://127.0.0.1:9")
        from omni_app import zerogpu
        zerogpu.prepare()
        from omni_app.config import ServiceConfig
        from omni_app.engine.local import LocalBackend
        from spaces.zero import torch as layer
        backend = LocalBackend.from_config(ServiceConfig(model="tiny"))
        backend.warmup()  # nothing runs: there is no GPU outside a request
        weight = next(backend.service.loaded.model.parameters())
        speech = next(backend.service.loaded.model.token2wav.parameters())
        # The inside tab's data is computed in this process, where the GPU is only emulated.
        from omni_app.conversation import Conversation
        seen = backend.inspect(Conversation().add_user("What is TMRoPE?"), None)
        print(json.dumps({"device": str(weight.device), "dtype": str(weight.dtype), "speech": str(speech.dtype),
                          "to_move": layer.size(), "in_process": backend._gpu.in_process,
                          "inspected_tokens": len(seen.tokens.kinds), "positions": list(seen.positions.shape)}))
    """
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["device"] == "cuda:0" and seen["dtype"] == "torch.bfloat16" and seen["speech"] == "torch.float32"
    assert seen["to_move"] > 1_000_000  # the weights ZeroGPU copies onto each lent GPU
    assert seen["in_process"] is False
    assert seen["inspected_tokens"] > 5 and seen["positions"] == [3, seen["inspected_tokens"]]


@pytest.fixture(scope="module")
def zerogpu_run(tmp_path_factory):
    """tests/zerogpu_checks.py under the emulated ZeroGPU: one model load, every scenario."""
    out = tmp_path_factory.mktemp("zerogpu") / "report.json"
    run = subprocess.run([sys.executable, str(EMULATOR), str(ROOT / "tests" / "zerogpu_checks.py"), str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text()), run.stderr


def test_replies_stream_from_zerogpus_worker_process(zerogpu_run):
    report, _ = zerogpu_run
    assert report["in_process"] is False
    reply = report["reply"]
    assert reply["kinds"][0] == "TextDelta" and reply["kinds"][-1] == "Done" and reply["text"]
    assert "AudioChunk" in reply["kinds"] and reply["audio_samples"] > 0
    assert report["spoken_then_text_only"]["audio_samples"] == 0 and report["spoken_then_text_only"]["text"]
    # Every generation ran in one forked worker, not in the app's process.
    assert len(report["allowed_pids"]) == 1 and report["allowed_pids"][0] != report["parent"]


def test_the_zerogpu_runner_keeps_the_contract(zerogpu_run):
    from contract import matrix_row, problems

    report, _ = zerogpu_run
    print("\nzerogpu:", json.dumps(matrix_row(report["contract"])))
    assert problems(report["contract"]) == []


def test_stop_crosses_the_process_boundary(zerogpu_run):
    report, _ = zerogpu_run
    stop = report["stop"]
    assert stop["reason"] == "cancelled" and stop["kinds"][-1] == "Done"
    assert stop["tokens"] < 20  # of the 400 it could have run to
    assert report["after_stop"]["reason"] in ("finished", "length") and report["after_stop"]["audio_samples"] > 0


def test_errors_in_the_worker_reach_the_caller(zerogpu_run):
    report, stderr = zerogpu_run
    assert report["worker_error"] == {"error": "RequestError", "message": "There is no text to speak: type some first."}
    crash = report["crash"]
    assert crash["error"] == "RuntimeError" and "shapes cannot be multiplied" in crash["message"]
    assert "the GPU worker failed" in stderr  # with the worker's traceback, for whoever runs the Space
    assert report["after_crash"]["reason"] in ("finished", "length")


def test_a_spent_quota_is_told_plainly(zerogpu_run):
    report, _ = zerogpu_run
    assert report["quota"]["error"] == "GpuUnavailable" and "run out for now" in report["quota"]["message"]


def test_each_reply_asks_for_gpu_time_sized_to_it(zerogpu_run):
    report, _ = zerogpu_run
    asked = report["gpu_seconds_asked"]
    reply, text_only, long_story = asked[:3]
    assert text_only < reply < long_story <= 90  # 90: the cap the checks set
    assert len(asked) == 8  # one schedule per reply, the refused one included


def until(probe, accept, timeout: float = 120):
    """The first value of ``probe()`` that ``accept`` (a predicate, or a text it contains) takes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = probe()
        if (accept in value) if isinstance(accept, str) else accept(value):
            return value
        time.sleep(0.1)
    pytest.fail(f"still waiting; last seen: {value!r}")


def test_the_built_zerogpu_space_queues_answers_and_tells_a_visitor_when_the_quota_is_spent(tmp_path):
    from gradio_client import Client
    from gradio_client.utils import Status
    from launch import serving

    from omni_app.space.build import build_space

    spacefile = tmp_path / "Spacefile"
    spacefile.write_text("title: ZeroGPU test\nemoji: 🎙️\nshort_description: On ZeroGPU\nhardware: zero-gpu\n"
                         "model: tiny\ntabs: [voice]\nlimits:\n  reply_tokens: 16\n  speech_seconds: 1.5\n"
                         "zero_gpu:\n  gpu_seconds: 40\n")
    folder = build_space(tmp_path / "space", spacefile).folder
    log = tmp_path / "space.log"
    with serving([sys.executable, str(EMULATOR), "app.py"], cwd=folder, log=log) as url:
        device_api = re.search(r"device API at (\S+)", log.read_text()).group(1)

        def mode(value: str) -> None:
            urllib.request.urlopen(urllib.request.Request(f"{device_api}/emulator/mode?value={value}", method="POST"))

        # Every GPU busy: the first visitor waits in ZeroGPU's queue and is told so; the second
        # waits in the app's queue (one reply at a time) and sees its place in it.
        mode("hold")
        first = Client(url, verbose=False, download_files=False).submit("Hello there", "Chelsie", True,
                                                                        api_name="/voice_chat_text")
        told = until(lambda: (first.status().log or ("",))[0], "Waiting for a GPU")
        second = Client(url, verbose=False, download_files=False).submit("Me too", "Chelsie", True,
                                                                         api_name="/voice_chat_text")
        place = until(lambda: second.status(), lambda s: s.code == Status.IN_QUEUE and s.rank is not None)
        mode("ok")
        updates = list(first)
        list(second)
        assert first.outputs()[-1][0][-1]["content"][0]["text"].strip()
        assert second.outputs()[-1][0][-1]["content"][0]["text"].strip()
        # The speech reached the page's player chunk by chunk, and its WAV came after it.
        assert any(isinstance(u[1], str) and '"seq"' in u[1] for u in updates)
        assert first.outputs()[-1][3]["url"]
        mode("quota")
        # A signed-in visitor: ZeroGPU tells how long until their quota is back.
        token = "x." + base64.urlsafe_b64encode(b'{"user": "visitor"}').decode().rstrip("=") + ".y"
        visitor = Client(url, verbose=False, download_files=False, headers={"x-ip-token": token})
        with pytest.raises(Exception) as refused:
            visitor.predict("Hello again", "Chelsie", True, api_name="/voice_chat_text")
        with urllib.request.urlopen(f"{device_api}/emulator/calls") as answer:
            calls = json.load(answer)
    assert "Waiting for a GPU to become available" in told
    assert place.rank == 0 and place.queue_size == 1
    assert "run out for now" in str(refused.value) and "Try again in 0:12:34" in str(refused.value)
    paths = [c["path"] for c in calls]
    assert paths[0] == "/startup-report" and paths.count("/schedule") == 3 and "/allow" in paths
    assert [c.get("token") for c in calls if c["path"] == "/schedule"][-1] == token
    # The app started as a ZeroGPU Space does: spaces reported the start and lent a GPU per reply.
    assert "Running on local URL" in log.read_text() and "loading tiny on zero-gpu" in log.read_text()
