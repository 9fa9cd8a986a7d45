"""The launched app through gradio_client: the click endpoints stream partial outputs."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
import wave
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def streamed_samples(values) -> np.ndarray:
    """The int16 speech in a run of speech-player values, each chunk once, in sequence order."""
    chunks = {}
    for value in values:
        for line in (value or "").split("\n")[1:]:
            record = json.loads(line)
            if "seq" in record:
                chunks[record["seq"]] = np.frombuffer(base64.b64decode(record["pcm"]), "<i2")
    assert sorted(chunks) == list(range(len(chunks)))
    return np.concatenate([chunks[k] for k in sorted(chunks)])


def test_text_endpoint_streams(live_app):
    client = Client(live_app.url, verbose=False, download_files=False)
    job = client.submit("Hello there", "Chelsie", True, api_name="/voice_chat_text")
    job.result(timeout=120)
    updates = job.outputs()
    texts = [u[0][-1]["content"][0]["text"] for u in updates if isinstance(u[0], list)]
    assert len(texts) >= 3 and texts[0] == "" and len(texts[-1]) > len(texts[1])
    final = updates[-1]
    assert "first audio" in final[2]
    # The replay WAV served after the reply holds exactly the samples that were streamed.
    with urllib.request.urlopen(final[3]["url"], timeout=10) as response:
        with wave.open(io.BytesIO(response.read())) as wav:
            served = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert len(served) and np.array_equal(served, streamed_samples([u[1] for u in updates]))


def test_image_endpoint_streams(live_app):
    client = Client(live_app.url, verbose=False, download_files=False)
    job = client.submit(handle_file(str(ASSETS / "beach.jpg")), "What is this?", None, "Ethan", False,
                        api_name="/image_qa")
    updates = list(job)
    assert len(updates) >= 3
    final = job.outputs()[-1]
    assert final[0][-1]["role"] == "assistant" and final[0][-1]["content"][0]["text"]
    assert "tokens" in final[2] and final[3] is None  # no speech asked for, no WAV


def test_a_malformed_voice_file_does_not_stop_the_app(live_app):
    log = live_app.log.read_text()
    assert "broken.voice.safetensors is not a valid voice file" in log and "skipped" in log


def test_the_page_carries_the_players_script_once(live_app):
    # Four speaking tabs, one script: the page's head has it, no player repeats it.
    marker = "window.OmniSpeech = {"
    with urllib.request.urlopen(live_app.url) as page:
        assert page.read().decode().count(marker) == 1
    with urllib.request.urlopen(f"{live_app.url}config") as answer:
        config = json.load(answer)
    assert marker in config["head"]
    assert not [c for c in config["components"] if marker in json.dumps(c.get("props", {}))]
