"""The Spacefile: the repository's own is valid, and every mistake gets an error naming its field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omni_app.space.spacefile import (
    Spacefile,
    SpacefileError,
    gpu_memory_needed,
    load_spacefile,
    longest_video_that_fits,
)

ROOT = Path(__file__).resolve().parents[1]

VALID = """\
title: A Space
emoji: 🎙️
short_description: Talk to it
hardware: {hardware}
model: {model}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Spacefile"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_repository_spacefile_is_valid():
    space = load_spacefile(ROOT / "Spacefile")
    assert space.is_zero_gpu and space.checkpoint == "Qwen/Qwen2.5-Omni-7B"
    assert gpu_memory_needed(space.model, space.limits.video_seconds) <= space.gpu_memory


def test_defaults_and_model_names(tmp_path):
    space = load_spacefile(write(tmp_path, VALID.format(hardware="a100-large", model="Qwen/Qwen2.5-Omni-7B")))
    assert space.model == "7B" and space.tabs == ("voice", "video", "image", "tts", "inside")
    assert space.suggested_hardware == "a100-large" and space.limits.concurrency == 1
    assert load_spacefile(write(tmp_path, VALID.format(hardware="cpu", model="tiny"))).suggested_hardware == "cpu-basic"
    tabs = load_spacefile(write(tmp_path, VALID.format(hardware="cpu", model="tiny") + "tabs: voice, tts\n"))
    assert tabs.tabs == ("voice", "tts")


def test_memory_follows_the_model_card():
    # 7B: 31.1 / 41.9 / 60.2 GB for 15 / 30 / 60 s of video, with the 1.2x margin.
    assert gpu_memory_needed("7B", 30) == pytest.approx(41.9 * 1.2)
    assert gpu_memory_needed("3B", 5) == pytest.approx(18.4 * 1.2)
    assert gpu_memory_needed("7B", 20) < gpu_memory_needed("7B", 25) < gpu_memory_needed("7B", 90)
    assert longest_video_that_fits("7B", 48) == 27 and longest_video_that_fits("7B", 30) == 0


@pytest.mark.parametrize("extra, field", [
    ("hardware: h100\nmodel: 7B\n", "hardware: unknown 'h100'"),
    ("hardware: a100x4\nmodel: 7B\n", "hardware: a100x4 has several GPUs"),
    ("hardware: zero-gpu\nmodel: 13B\n", "model: must be one of 7B, 3B, tiny"),
    ("hardware: cpu\nmodel: 7B\n", "model: the 7B needs a GPU"),
    ("hardware: l4x1\nmodel: 7B\n", "hardware: the 7B needs at least 37 GB"),
    ("hardware: zero-gpu\nmodel: 7B\nlimits:\n  video_seconds: 60\n", "limits.video_seconds: the 7B needs about 72 GB"),
    ("hardware: l4x1\nmodel: 3B\nlimits:\n  video_seconds: 10\n  concurrency: 65\n", "limits.concurrency:"),
    ("hardware: cpu\nmodel: tiny\nlimits:\n  reply_tokens: -1\n", "limits.reply_tokens: must be a whole number"),
    ("hardware: cpu\nmodel: tiny\nlimits:\n  speech_seconds: lots\n", "limits.speech_seconds: must be a number"),
    ("hardware: cpu\nmodel: tiny\nlimits:\n  video: 10\n", "limits.video: unknown field"),
    ("hardware: zero-gpu\nmodel: 3B\nzero_gpu:\n  gpu_seconds: 900\n", "zero_gpu.gpu_seconds: must be a whole number"),
    ("hardware: zero-gpu\nmodel: 3B\nzero_gpu:\n  size: medium\n", "zero_gpu.size: must be one of large, xlarge"),
    ("hardware: cpu\nmodel: tiny\ntabs: [voice, chat]\n", "tabs: unknown tab(s) 'chat'"),
    ("hardware: cpu\nmodel: tiny\ncolour: red\n", "colour: unknown field"),
])
def test_a_mistake_names_its_field(tmp_path, extra, field):
    text = "title: A Space\nemoji: 🎙️\nshort_description: Talk to it\n" + extra
    with pytest.raises(SpacefileError) as caught:
        load_spacefile(write(tmp_path, text))
    assert field in str(caught.value)
    assert str(caught.value).startswith(str(tmp_path / "Spacefile"))


@pytest.mark.parametrize("text, field", [
    (VALID.format(hardware="cpu", model="tiny").replace("title: A Space\n", ""), "title: missing"),
    (VALID.format(hardware="cpu", model="tiny").replace("🎙️", "mic"), "emoji: must be one emoji"),
    (VALID.format(hardware="cpu", model="tiny").replace("Talk to it", "x" * 61), "short_description: the Hub takes"),
    ("- just\n- a list\n", "it must be a mapping"),
    ("title: [unclosed\n", "not valid YAML (line 2)"),
])
def test_broken_files_say_what_is_wrong(tmp_path, text, field):
    with pytest.raises(SpacefileError, match=field.replace("(", r"\(").replace(")", r"\)")):
        load_spacefile(write(tmp_path, text))


def test_the_checks_hold_for_spacefiles_made_in_code():
    with pytest.raises(SpacefileError, match="limits and zero_gpu"):
        Spacefile("T", "🎙️", "d", "cpu", "tiny", limits={"video_seconds": 3})


def test_the_command_line_gives_one_line(tmp_path):
    bad = write(tmp_path, VALID.format(hardware="l4x1", model="3B") + "limits:\n  video_seconds: 45\n")
    out = subprocess.run([sys.executable, "-m", "omni_app", "space", "build", str(tmp_path / "space"),
                          "--spacefile", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ))
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "limits.video_seconds" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "space").exists()
