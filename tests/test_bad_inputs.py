"""Corrupt, cut-short and mislabelled files on every path in: the message says which input and
what to do, and never shows a server path, an errno, a library's text or a traceback.

The same corpus goes through the decoder, a UI handler, the API, the command line, a model
behind a remote server, and (in test_ray.py) the Ray Serve endpoint.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import gradio as gr
import httpx
import pytest
from conftest import SERVER_KEY

from omni_app.errors import OmniError
from omni_app.media import MediaLimits, load_audio, load_image, load_video

ROOT = Path(__file__).resolve().parent.parent
#: Where this machine keeps things: no message may name any of them.
MACHINE_PLACES = {tempfile.gettempdir(), str(ROOT), str(Path.home()), sys.prefix, sys.base_prefix}
#: What must never reach a person: paths on the server, errnos, decoders' and Python's own words.
LEAKS = re.compile("|".join([re.escape(place) for place in MACHINE_PLACES if len(place) > 3] + [
    "site-packages", "Errno", "errno", "Traceback", 'File "', "Invalid data found", "InvalidData",
    "UnidentifiedImage", "cannot identify", "libsndfile", r"av\.error", r"PIL\.", "Error:", "Exception"]))


def corpus(media_dir: Path, out: Path) -> list[tuple[str, str, Path]]:
    """(what it is, the kind it is offered as, the file): files a person might send by mistake."""
    photo = (media_dir / "photo.jpg").read_bytes()
    speech = (media_dir / "speech.wav").read_bytes()
    video = (media_dir / "talking.mp4").read_bytes()
    png = out / "whole.png"
    from PIL import Image

    Image.open(media_dir / "photo.jpg").save(png)
    files = {
        "random bytes.wav": ("audio", os.urandom(4096)),
        "random bytes.mp4": ("video", os.urandom(4096)),
        "random bytes.jpg": ("image", os.urandom(4096)),
        "empty.wav": ("audio", b""),
        "cut short.png": ("image", png.read_bytes()[: len(png.read_bytes()) // 3]),
        "cut short.jpg": ("image", photo[:600]),
        "cut short.mp4": ("video", video[:1500]),
        "cut short.wav": ("audio", speech[:30]),
        "a text file.jpg": ("image", b"Dear all,\nthe meeting moves to Tuesday.\n" * 20),
        "a text file.wav": ("audio", b"Dear all,\nthe meeting moves to Tuesday.\n" * 20),
        "speech named photo.jpg": ("image", speech),
        "photo named speech.wav": ("audio", photo),
        "photo named clip.mp4": ("video", photo),
        "speech named clip.mp4": ("video", speech),
    }
    made = []
    for name, (kind, data) in files.items():
        path = out / name
        path.write_bytes(data)
        made.append((name, kind, path))
    return made


LOADERS = {"audio": load_audio, "image": load_image, "video": load_video}
#: Not a mistake after all: a still picture is a video of one frame.
ACCEPTED = ["photo named clip.mp4"]


def clean(message: str) -> bool:
    return LEAKS.search(message) is None


@pytest.fixture(scope="module")
def bad_files(media_dir, tmp_path_factory):
    return corpus(media_dir, tmp_path_factory.mktemp("bad inputs"))


def test_the_decoder_names_the_file_and_keeps_the_detail_in_the_log(bad_files, caplog):
    caplog.set_level(logging.INFO, logger="omni_app")
    messages, accepted = {}, []
    for name, kind, path in bad_files:
        try:
            LOADERS[kind](path, MediaLimits())
        except OmniError as exc:
            message = str(exc)
        else:
            accepted.append(name)
            continue
        messages[name] = message
        assert clean(message), message
        assert path.name in message, message  # which input: its own name, not where the server keeps it
        ref = re.search(r"reference ([0-9a-f]{8})", message)
        if ref:  # the detail is in the log under the same reference
            assert any(ref.group(1) in r.getMessage() for r in caplog.records), message
    print("\n" + "\n".join(f"{k}: {v}" for k, v in messages.items()))
    assert accepted == ACCEPTED
    assert sum("reference" in m for m in messages.values()) >= 8  # most were the decoder's own failures


def test_the_page_shows_a_clean_message_for_each_file(service, bad_files):
    from omni_app.config import GenerationLimits
    from omni_app.engine.local import LocalBackend
    from omni_app.ui.app import build_app
    from omni_app.ui.context import AppContext

    context = AppContext(LocalBackend(service), GenerationLimits(max_new_tokens=4, max_speech_seconds=0.5),
                         MediaLimits())
    try:
        handlers = {f.name: f.fn for f in build_app(context).fns.values() if f.fn is not None}
        explain = handlers["explain_new"]  # the inside tab takes an uploaded video as a file
        for name, kind, path in bad_files:
            if kind != "video" or name in ACCEPTED:
                continue
            with pytest.raises(gr.Error) as raised:
                explain("What is this?", None, None, str(path), request=gr.Request(session_hash="bad"))
            assert clean(raised.value.message) and path.name in raised.value.message, raised.value.message
    finally:
        context.speech.close()


def test_a_failure_that_is_not_the_persons_is_one_line_with_a_reference(caplog):
    from omni_app.ui.errors import as_gr_error

    caplog.set_level(logging.ERROR, logger="omni_app")
    error = as_gr_error(OSError(2, "No such file or directory", "/srv/models/secret/config.json"), "a test")
    assert clean(error.message) and "/srv" not in error.message
    ref = re.search(r"reference ([0-9a-f]{8})", error.message).group(1)
    assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)  # the traceback, in the log


def _data_url(kind: str, path: Path) -> dict:
    mime = {"audio": "audio/wav", "image": "image/jpeg", "video": "video/mp4"}[kind]
    url = f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
    if kind == "audio":
        return {"type": "input_audio", "input_audio": {"data": url.split(",", 1)[1], "format": "wav"}}
    return {"type": f"{kind}_url", f"{kind}_url": {"url": url}}


def api_messages(url: str, bad_files, key: str | None) -> dict[str, tuple[int, str]]:
    """Each file sent to ``url``'s chat completions: (status, the error's message)."""
    out = {}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for name, kind, path in bad_files:
        if name in ACCEPTED:
            continue
        body = {"model": "tiny", "messages": [{"role": "user", "content": [_data_url(kind, path),
                                                                          {"type": "text", "text": "What?"}]}]}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
        out[name] = (answer.status_code, answer.json()["error"]["message"])
    return out


def test_the_api_answers_each_file_with_a_400_and_a_clean_message(live_server, bad_files):
    for name, (status, message) in api_messages(live_server.url, bad_files, SERVER_KEY).items():
        assert status == 400 and clean(message), (name, message)
    assert "Traceback" not in live_server.log.read_text()


def test_the_command_line_says_one_clean_line(bad_files):
    for name, kind, path in [f for f in bad_files if f[0] not in ACCEPTED][::4]:
        out = subprocess.run([sys.executable, "-m", "omni_app", "chat", "--model", "tiny", f"--{kind}", str(path),
                              "What?"], cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True,
                             text=True, timeout=300)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), (name, out.stderr)
        # The person's own path is theirs to see; nothing else of the machine's is.
        assert clean(lines[0].replace(str(path.parent), "")), lines[0]


def test_a_remote_model_relays_clean_messages(live_server):
    from omni_app.api import Request
    from omni_app.conversation import Conversation
    from omni_app.errors import BackendUnavailable
    from omni_app.serve.remote import RemoteBackend

    backend = RemoteBackend(live_server.url, api_key=SERVER_KEY)
    with pytest.raises(OmniError) as raised:
        list(backend.stream(Request(Conversation().add_user("hi"), voice="Nobody-Such")))
    assert clean(str(raised.value)) and "Nobody-Such" in str(raised.value)
    with pytest.raises(BackendUnavailable) as raised:
        RemoteBackend("http://127.0.0.1:9")  # nothing listens there
    assert clean(str(raised.value)), str(raised.value)
