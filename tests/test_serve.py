"""``python -m omni_app serve`` through the unmodified ``openai`` client (tiny model, CPU)."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from conftest import SERVER_KEY

from omni_app.api import Request
from omni_app.config import GenerationLimits
from omni_app.conversation import Conversation
from omni_app.engine.local import LocalBackend
from omni_app.errors import MediaError
from omni_app.events import AudioChunk, TextDelta


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=SERVER_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local(service):
    return LocalBackend(service)


def health(live_server) -> dict:
    return httpx.get(f"{live_server.url}/health").json()


def test_streamed_speech_is_the_local_backends_and_starts_before_the_text_ends(client, local):
    # Long enough on the tiny model that speech starts while the text is still coming.
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Go"}], modalities=["text", "audio"],
        audio={"voice": "Chelsie", "format": "pcm16"}, stream=True, seed=1, max_completion_tokens=64,
        stream_options={"include_usage": True}, extra_body={"max_speech_seconds": 1.5})
    order, text, pcm, final = [], [], b"", None
    for chunk in stream:
        if not chunk.choices:
            final = chunk
            continue
        audio = chunk.choices[0].delta.audio
        if audio is not None and audio.transcript:
            order.append("text")
            text.append(audio.transcript)
        if audio is not None and audio.data:
            order.append("audio")
            pcm += base64.b64decode(audio.data)
    assert "audio" in order and order.index("audio") < len(order) - 1 - order[::-1].index("text")

    events = list(local.stream(Request(Conversation().add_user("Go"), voice="Chelsie", seed=1,
                                       limits=GenerationLimits(max_new_tokens=64, max_speech_seconds=1.5))))
    assert "".join(text) == "".join(e.text for e in events if isinstance(e, TextDelta))
    expected = np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])
    assert np.array_equal(np.frombuffer(pcm, "<i2"), expected)

    stats = final.model_extra["stats"]
    assert final.usage.completion_tokens == stats["text_tokens"] == events[-1].stats.text_tokens
    assert final.usage.prompt_tokens > 0 and stats["seed"] == 1 and stats["engine"] == "streaming"
    assert 0 < stats["time_to_first_audio"] < stats["total_time"] and stats["audio_seconds"] == pytest.approx(1.5)


def test_without_include_usage_every_streamed_chunk_has_a_choice(client):
    # As OpenAI streams: a client that reads choices[0] of every chunk never meets an empty list.
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], stream=True,
                                            seed=1, max_completion_tokens=8)
    chunks = list(stream)
    assert chunks and all(chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason and chunks[-1].model_extra["stats"]["text_tokens"] > 0


def test_a_whole_reply_in_wav_is_a_24khz_wav_with_its_transcript(client):
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], modalities=["text", "audio"],
        audio={"voice": "Ethan", "format": "wav"}, max_completion_tokens=12, extra_body={"max_speech_seconds": 1})
    audio = reply.choices[0].message.audio
    samples, rate = sf.read(io.BytesIO(base64.b64decode(audio.data)), dtype="int16")
    assert rate == 24000 and samples.ndim == 1 and len(samples) > 0
    assert audio.transcript and reply.choices[0].message.content is None
    assert reply.usage.completion_tokens == reply.model_extra["stats"]["text_tokens"] > 0

    # A later turn may refer to that spoken reply by its id, as OpenAI's clients do.
    follow = client.chat.completions.create(model="tiny", max_completion_tokens=4, messages=[
        {"role": "user", "content": "Hello"}, {"role": "assistant", "audio": {"id": audio.id}},
        {"role": "user", "content": "And then?"}])
    assert follow.usage.prompt_tokens > reply.usage.prompt_tokens


def test_speech_endpoint_speaks_exactly_the_given_text(client, local):
    words = "Hello there. This sentence is read exactly as written."
    with client.audio.speech.with_streaming_response.create(
            model="tiny", voice="Ethan", input=words, response_format="wav",
            extra_body={"seed": 5, "max_speech_seconds": 1}) as response:
        body = response.read()
    samples, rate = sf.read(io.BytesIO(body), dtype="int16")
    events = list(local.stream(Request(voice="Ethan", speak_text=words, seed=5,
                                       limits=GenerationLimits(max_speech_seconds=1))))
    assert rate == 24000
    assert np.array_equal(samples, np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)]))


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "http://127.0.0.1:{port}/cat.png"}},
    {"type": "video_url", "video_url": {"url": "https://127.0.0.1:{port}/clip.mp4"}},
    {"type": "audio_url", "audio_url": {"url": "file:///etc/passwd"}},
])
def test_a_url_is_refused_and_never_fetched(client, part):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        part = json.loads(json.dumps(part).replace("{port}", str(listener.getsockname()[1])))
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is this?"}, part]}])
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody connected
    error = refused.value.body
    assert refused.value.status_code == 400 and "only data: URLs are accepted" in error["message"]
    assert error["param"] == f"messages[0].content[1].{part['type']}.url" and error["code"] == "invalid_url"


def test_corrupt_audio_gets_a_clear_400_and_the_server_keeps_serving(client, live_server):
    corrupt = base64.b64encode(b"RIFF\x10\x00\x00\x00WAVEfmt garbage that is no audio").decode()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": corrupt, "format": "wav"}}]}])
    message = refused.value.body["message"]
    assert message.startswith("messages[0].content[0] (audio): ") and "not a readable audio" in message
    assert "Traceback" not in message
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Still there?"}],
                                           max_completion_tokens=3)
    assert reply.choices[0].finish_reason in ("stop", "length") and health(live_server)["status"] == "ok"


def test_a_client_that_disconnects_frees_the_model(client, live_server):
    before = health(live_server)["requests"]["cancelled"]
    # Uncut, this reply would run for minutes on the tiny model (512 tokens, 60 s of speech).
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me everything"}], modalities=["text", "audio"],
        audio={"voice": "Chelsie", "format": "pcm16"}, stream=True, max_completion_tokens=512,
        extra_body={"max_speech_seconds": 60})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.audio is not None and chunk.choices[0].delta.audio.data:
            break
    stream.close()
    deadline = time.time() + 30
    while (state := health(live_server))["active"] and time.time() < deadline:
        time.sleep(0.1)
    assert state["active"] == 0 and not state["busy"] and state["requests"]["cancelled"] == before + 1
    follow = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Next"}],
                                            max_completion_tokens=3)
    assert follow.model_extra["stats"]["finish_reason"] in ("finished", "length")


def test_requests_need_the_key_but_health_does_not(live_server):
    wrong = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
    missing = httpx.post(f"{live_server.url}/v1/chat/completions", json={"messages": []})
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    assert httpx.get(f"{live_server.url}/health").json()["server"] == "omni_app"


def test_models_lists_the_model_with_its_voices(client):
    (card,) = client.models.list().data
    assert card.id == "tiny" and card.model_extra["stock_voices"] == ["Chelsie", "Ethan"]
    assert card.model_extra["capabilities"]["speak_text"] is True


class FailsAfterFirstEvent:
    """A backend whose reply breaks once it has started (a device lost mid-reply, say)."""

    def __init__(self, backend) -> None:
        self.backend = backend

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def stream(self, request, cancel=None):
        events = self.backend.stream(request, cancel)
        try:
            yield next(events)
            raise MediaError("The recording stopped making sense halfway.")
        finally:
            events.close()


def test_an_error_after_the_stream_started_is_an_event_and_serving_goes_on(local):
    from fastapi.testclient import TestClient

    from omni_app.serve.server import make_app

    app = make_app(FailsAfterFirstEvent(local))
    with TestClient(app) as http:
        body = {"messages": [{"role": "user", "content": "Hello"}], "stream": True, "max_tokens": 6}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line for line in response.iter_lines() if line]
        assert response.status_code == 200 and lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2].removeprefix("data: "))["error"]["message"] == (
            "The recording stopped making sense halfway.")
        assert http.get("/health").json()["requests"]["failed"] == 1
        app.state.omni.backend = local  # the same server, now over a working backend
        assert http.post("/v1/chat/completions", json={**body, "stream": False}).status_code == 200


def test_a_body_over_the_limit_gets_413(local):
    from fastapi.testclient import TestClient

    from omni_app.serve.server import ServerSettings, make_app

    with TestClient(make_app(local, ServerSettings(max_body_bytes=4096))) as http:
        response = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 5000}]})
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
        assert http.post("/v1/chat/completions", content=b"{oops").json()["error"]["message"].startswith(
            "The request body is not valid JSON")
        assert http.get("/v2/anything").status_code == 404


# --- the server's own bookkeeping, in process -----------------------------------------------------

def test_a_busy_server_refuses_before_reading_the_body_and_gives_the_place_back(local):
    import anyio

    from omni_app.serve.responses import ApiError
    from omni_app.serve.state import ServerSettings, ServerState

    state = ServerState(local, ServerSettings(max_active=1))

    async def scenario():
        async with state.admitted():  # one request is reading its body (or decoding its media)
            with pytest.raises(ApiError) as refused:
                async with state.admitted():
                    pytest.fail("admitted past max_active")
            assert refused.value.status == 429 and state.active == 1
        assert state.active == 0  # a request that failed before it started gave its place back

    anyio.run(scenario)


def test_a_stream_whose_client_left_before_its_first_byte_is_closed(local):
    import anyio
    from starlette.requests import ClientDisconnect

    from omni_app.api import CancelToken
    from omni_app.serve.bridge import Pump
    from omni_app.serve.responses import ClosingStreamingResponse

    closed = []
    pump = Pump((event for event in []), CancelToken(), closed.append)

    async def body():
        yield b"never sent"

    async def gone(message):  # an ASGI 2.4 server: sending to a client that left fails
        raise OSError("the client went away")

    async def receive():
        return {"type": "http.disconnect"}

    async def scenario():
        response = ClosingStreamingResponse(body(), pump, media_type="text/event-stream")
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}}
        with pytest.raises(ClientDisconnect):  # as starlette reports a failed send
            await response(scope, receive, gone)

    anyio.run(scenario)
    deadline = time.monotonic() + 10
    while not closed and time.monotonic() < deadline:  # the stream is closed in a thread of its own
        time.sleep(0.01)
    assert closed == [pump] and pump.cancel.is_set()
