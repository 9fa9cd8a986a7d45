"""RemoteBackend: the app and CLI on a model served elsewhere (our server, or vLLM-Omni)."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf
from conftest import SERVER_BATCH, SERVER_KEY
from gradio_client import Client

from omni_app.api import CancelToken, Request
from omni_app.config import GenerationLimits
from omni_app.conversation import AudioPart, Conversation, ImagePart, VideoPart
from omni_app.engine.local import LocalBackend
from omni_app.errors import BackendUnavailable, RequestError, Unsupported
from omni_app.events import AudioChunk, Done, Notice, TextDelta
from omni_app.media import load_audio, load_image, load_video
from omni_app.serve.encode import png, video_file
from omni_app.serve.pcm import float_wav
from omni_app.serve.remote import RemoteBackend

SHORT = GenerationLimits(max_new_tokens=24, max_speech_seconds=1)


@pytest.fixture(scope="module")
def remote(live_server):
    return RemoteBackend(f"{live_server.url}/v1", api_key=SERVER_KEY)


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def speech_of(events) -> np.ndarray:
    return np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])


def test_speech_arrives_as_from_the_local_engine(remote, service):
    request = Request(Conversation().add_user("Hello"), voice="Ethan", limits=SHORT, seed=7)
    events = list(remote.stream(request))
    local = list(LocalBackend(service).stream(request))
    assert text_of(events) == text_of(local)
    assert np.array_equal(speech_of(events), speech_of(local))
    done = events[-1]
    assert isinstance(done, Done) and done.reason == "length" and done.trace is None
    stats = done.stats  # measured here, the server's own figures kept beside them
    assert 0 < stats.time_to_first_text < stats.time_to_first_audio < stats.total_time
    assert stats.extra["server_time_to_first_audio"] <= stats.time_to_first_audio
    assert stats.extra["seed"] == 7 and stats.text_tokens == local[-1].stats.text_tokens
    assert stats.audio_seconds == pytest.approx(local[-1].stats.audio_seconds)


def test_what_the_remote_backend_says_it_can_do(remote, live_server):
    info = remote.info
    assert info.model == "tiny" and info.is_tiny and not info.can_inspect and info.can_speak_text
    assert live_server.url in info.description and remote.dialect == "openai"
    assert remote.stock_voices() == ["Chelsie", "Ethan"] and remote.voices()[:2] == ["Chelsie", "Ethan"]
    with pytest.raises(Unsupported, match="needs its weights"):
        remote.inspect(Conversation().add_user("Hi"), None)


def test_media_round_trips_exactly(media_dir):
    clip = load_video(media_dir / "talking.mp4")
    again = load_video(video_file(clip, lossless=True))
    assert np.array_equal(again.frames, clip.frames) and np.array_equal(again.audio, clip.audio)
    image = load_image(media_dir / "photo.jpg")
    assert np.array_equal(np.asarray(load_image(png(image))), np.asarray(image))
    audio = load_audio(media_dir / "speech.wav")
    assert np.array_equal(load_audio(float_wav(audio, 16000)), audio)
    lossy = load_video(video_file(clip, lossless=False))  # what vLLM-Omni gets: same frames, close pixels
    assert lossy.frames.shape == clip.frames.shape and lossy.audio is not None


def test_media_reach_the_server_and_give_the_local_reply(remote, service, media_dir):
    # Audio, image and video all reach the model: the same (greedy) reply as in this process.
    conversation = Conversation().add_user(
        AudioPart(load_audio(media_dir / "speech.wav")), ImagePart(load_image(media_dir / "photo.jpg")),
        VideoPart(load_video(media_dir / "talking.mp4")), "What do you see and hear?")
    request = Request(conversation, voice=None, limits=GenerationLimits(max_new_tokens=8))
    assert text_of(remote.stream(request)) == text_of(LocalBackend(service).stream(request))


def test_a_made_voice_speaks_through_the_server(remote, media_dir):
    voice = remote.create_voice("Reader", load_audio(media_dir / "speech.wav"), base="Ethan")
    events = list(remote.stream(Request(voice=voice, speak_text="Read this, please.", limits=SHORT, seed=1)))
    assert len(speech_of(events)) > 0 and events[-1].reason in ("finished", "length")


def test_cancel_stops_the_remote_reply(remote):
    cancel = CancelToken()
    events = []
    long = GenerationLimits(max_new_tokens=512, max_speech_seconds=60)
    for event in remote.stream(Request(Conversation().add_user("On and on"), limits=long), cancel):
        events.append(event)
        if isinstance(event, AudioChunk):
            cancel.cancel()
    assert events[-1].reason == "cancelled" and events[-1].stats.audio_seconds < 10


def test_a_cancel_cuts_a_reply_whose_read_waits_for_the_model(remote):
    long = GenerationLimits(max_new_tokens=512, max_speech_seconds=60)
    holding = CancelToken()

    def hold(index: int, speaking: threading.Event) -> None:
        request = Request(Conversation().add_user(f"Hold the model {index}"), limits=long, seed=1)
        for event in remote.stream(request, holding):
            if isinstance(event, AudioChunk):
                speaking.set()

    speaking = [threading.Event() for _ in range(SERVER_BATCH)]  # the server's whole batch
    holders = [threading.Thread(target=hold, args=(i, s)) for i, s in enumerate(speaking)]
    for holder in holders:
        holder.start()
    try:
        assert all(s.wait(120) for s in speaking)
        waiting, events = CancelToken(), []
        for event in remote.stream(Request(Conversation().add_user("Me next"), limits=long), waiting):
            events.append(event)
            if isinstance(event, Notice) and event.queue_position:
                # Stop pressed while the read is blocked: nothing more comes until the model is free.
                threading.Timer(0.5, waiting.cancel).start()
        assert events[-1].reason == "cancelled" and all(h.is_alive() for h in holders)
        assert not [e for e in events if isinstance(e, (TextDelta, AudioChunk))]
    finally:
        holding.cancel()
        for holder in holders:
            holder.join(60)


def test_notices_come_through(remote):
    conversation = Conversation(system_prompt="You are a pirate.").add_user("Ahoy")
    events = list(remote.stream(Request(conversation, voice="Chelsie", limits=GenerationLimits(4, 0.5))))
    # (A reply of an earlier test may still be ending: a place in the queue may come too.)
    (notice,) = [e for e in events if isinstance(e, Notice) and e.queue_position is None]
    assert "system prompt was changed" in notice.message and notice.level == "warning"


def test_server_errors_reach_the_user(remote):
    with pytest.raises(RequestError, match="Unknown voice 'Nobody'"):
        list(remote.stream(Request(Conversation().add_user("Hi"), voice="Nobody", limits=SHORT)))


def test_a_server_that_is_down_is_named():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(BackendUnavailable, match=f"The model server at {url} can't be reached"):
        RemoteBackend(url)
    with pytest.raises(RequestError, match="http"):
        RemoteBackend("gpu-box:8000")


def test_a_wrong_key_is_refused_with_the_servers_message(live_server):
    with pytest.raises(RequestError, match="API key is not valid"):
        RemoteBackend(live_server.url, api_key="wrong")


def test_the_app_runs_on_the_served_model(remote_app, service):
    client = Client(remote_app.url, verbose=False, download_files=False)
    job = client.submit("Hello there", "Chelsie", True, api_name="/voice_chat_text")
    updates = list(job)
    texts = [u[0][-1]["content"][0]["text"] for u in updates if isinstance(u[0], list)]
    assert len(texts) >= 3 and texts[0] == "" and len(texts[-1]) > len(texts[1])  # the text streamed
    final = job.outputs()[-1]
    assert "first audio" in final[2]  # and speech came, timed at the app
    local = LocalBackend(service).stream(Request(Conversation().add_user("Hello there"), voice=None,
                                                 limits=GenerationLimits(max_new_tokens=24)))
    assert texts[-1] == text_of(local)


# --- vLLM-Omni's dialect, against a stand-in that replays its documented stream --------------

def vllm_omni_stream(text_pieces: list[str], audio: np.ndarray, audio_format: str) -> list[str]:
    """SSE lines shaped as vllm_omni/entrypoints/openai/serving_chat.py streams them
    (``chat_completion_stream_generator`` and ``_create_audio_choice``): each chunk has a
    top-level ``modality``; text chunks carry ``delta.content`` text and only the last
    modality carries ``finish_reason``; an audio chunk carries base64 audio in
    ``delta.content`` (a whole WAV file per chunk by default, raw PCM16 for ``pcm``)
    with usage; then the usage chunk (no choices) and ``[DONE]``."""
    def chunk(delta, modality, finish=None, **extra):
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "Qwen/Qwen2.5-Omni-7B",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                "modality": modality, **extra}

    usage = {"prompt_tokens": 30, "completion_tokens": len(text_pieces), "total_tokens": 30 + len(text_pieces)}
    lines = [chunk({"role": "assistant", "content": ""}, "text")]
    lines += [chunk({"content": piece}, "text") for piece in text_pieces]
    lines.append(chunk({"content": ""}, "text", finish=None))
    parts = np.array_split(audio, 2)
    for index, part in enumerate(parts):
        if audio_format == "wav":
            buffer = io.BytesIO()
            sf.write(buffer, part, 24000, format="WAV", subtype="PCM_16")
            data = buffer.getvalue()
        else:
            data = part.astype("<i2").tobytes()
        finish = "stop" if index == len(parts) - 1 else None
        lines.append(chunk({"role": "assistant", "content": base64.b64encode(data).decode()}, "audio",
                           finish=finish, usage=usage))
    lines.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                  "model": "Qwen/Qwen2.5-Omni-7B", "choices": [], "usage": usage})
    return [f"data: {json.dumps(line)}\n\n" for line in lines] + ["data: [DONE]\n\n"]


@pytest.fixture
def vllm_omni():
    """A stand-in vLLM-Omni server: /health, /v1/models and a replayed chat stream."""
    received: list[dict] = []
    replay: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = b"" if self.path == "/health" else json.dumps({"object": "list", "data": [
                {"id": "Qwen/Qwen2.5-Omni-7B", "object": "model", "owned_by": "vllm"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for line in replay["lines"]:
                self.wfile.write(line.encode())
                self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received, replay
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("audio_format", ["wav", "pcm"])
def test_vllm_omni_stream_becomes_our_events(vllm_omni, audio_format):
    url, received, replay = vllm_omni
    speech = (np.sin(np.arange(4800) / 8) * 8000).astype(np.int16)
    replay["lines"] = vllm_omni_stream(["Hello", " there", "!"], speech, audio_format)
    backend = RemoteBackend(url)
    assert backend.dialect == "vllm-omni" and not backend.info.can_create_voices
    assert backend.voices() == ["Chelsie", "Ethan"]
    events = list(backend.stream(Request(Conversation().add_user("Hi"), voice="Ethan", limits=SHORT, seed=3)))
    assert text_of(events) == "Hello there!"
    assert np.array_equal(speech_of(events), speech)
    assert all(e.sample_rate == 24000 for e in events if isinstance(e, AudioChunk))
    done = events[-1]
    assert isinstance(done, Done) and done.reason == "finished" and done.stats.text_tokens == 3
    sent = received[-1]
    assert sent["speaker"] == "Ethan" and sent["modalities"] == ["text", "audio"] and sent["stream"] is True
    assert sent["max_tokens"] == 24 and sent["seed"] == 3 and "audio" not in sent
    with pytest.raises(Unsupported):
        backend.create_voice("Mine", np.zeros(16000, np.float32), base="Chelsie")
