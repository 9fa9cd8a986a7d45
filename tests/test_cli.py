"""The command line, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "omni_app", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_documents_every_option():
    out = cli("chat", "--help")
    assert out.returncode == 0
    for option in ("--model", "--audio", "--image", "--video", "--voice", "--seed", "--out", "--text-only",
                   "--max-new-tokens", "--max-speech-seconds", "--device"):
        assert option in out.stdout


def test_chat_with_media_writes_speech(media_dir, tmp_path):
    wav = tmp_path / "reply.wav"
    out = cli("chat", "--model", "tiny", "--audio", str(media_dir / "speech.mp3"), "--image",
              str(media_dir / "photo.jpg"), "--voice", "Ethan", "--seed", "7", "--max-new-tokens", "8",
              "--max-speech-seconds", "1", "--out", str(wav), "What do you hear and see?")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    info = sf.info(str(wav))
    assert info.samplerate == 24000 and info.channels == 1 and info.frames > 0
    again = tmp_path / "again.wav"
    out2 = cli("chat", "--model", "tiny", "--audio", str(media_dir / "speech.mp3"), "--image",
               str(media_dir / "photo.jpg"), "--voice", "Ethan", "--seed", "7", "--max-new-tokens", "8",
               "--max-speech-seconds", "1", "--out", str(again), "What do you hear and see?")
    assert out2.stdout == out.stdout
    assert again.read_bytes() == wav.read_bytes()


def test_text_only_prints_reply(media_dir, service):
    from omni_app.api import Request
    from omni_app.config import GenerationLimits
    from omni_app.conversation import Conversation, VideoPart
    from omni_app.events import TextDelta
    from omni_app.media import load_video

    out = cli("chat", "--text-only", "--quiet", "--max-new-tokens", "6", "--video", str(media_dir / "talking.mp4"))
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == ""
    # The same request in this process: the reply (greedy, so repeatable) is exactly what was printed.
    request = Request(Conversation().add_user(VideoPart(load_video(media_dir / "talking.mp4"))), voice=None,
                      limits=GenerationLimits(max_new_tokens=6))
    reply = "".join(e.text for e in service.stream(request) if isinstance(e, TextDelta))
    assert reply and out.stdout == reply + "\n"


def test_bad_input_is_one_line_without_traceback(media_dir, tmp_path):
    cases = [
        ("chat", "--audio", str(tmp_path / "missing.wav"), "hi"),
        ("chat", "--image", str(media_dir / "speech.wav"), "hi"),
        ("chat", "--voice", "Nobody", "--max-new-tokens", "2", "hi"),
        ("chat", "--text-only", "--out", str(tmp_path / "x.wav"), "hi"),
        ("chat", "--model", str(tmp_path / "no-such-folder"), "hi"),
        ("chat", ""),
    ]
    for args in cases:
        out = cli(*args)
        assert out.returncode != 0, args
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, out.stderr)
