"""The launched app through gradio_client: the click endpoints stream partial outputs."""

from __future__ import annotations

from pathlib import Path

from gradio_client import Client, handle_file

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def test_text_endpoint_streams(live_app):
    client = Client(live_app.url, verbose=False, download_files=False)
    job = client.submit("Hello there", "Chelsie", True, api_name="/voice_chat_text")
    updates = list(job)
    texts = [u[0][-1]["content"][0]["text"] for u in updates if isinstance(u[0], list)]
    assert len(texts) >= 3 and texts[0] == "" and len(texts[-1]) > len(texts[1])
    assert "first audio" in job.outputs()[-1][2]


def test_image_endpoint_streams(live_app):
    client = Client(live_app.url, verbose=False, download_files=False)
    job = client.submit(handle_file(str(ASSETS / "beach.jpg")), "What is this?", None, "Ethan", False,
                        api_name="/image_qa")
    updates = list(job)
    assert len(updates) >= 3
    final = job.outputs()[-1]
    assert final[0][-1]["role"] == "assistant" and final[0][-1]["content"][0]["text"]
    assert "tokens" in final[2]


def test_a_malformed_voice_file_does_not_stop_the_app(live_app):
    log = live_app.log.read_text()
    assert "broken.voice.safetensors is not a valid voice file" in log and "skipped" in log
