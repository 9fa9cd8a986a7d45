"""``WS /v1/realtime`` with the ``openai`` package's own realtime client, against ``serve`` in a subprocess."""

from __future__ import annotations

import base64
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import SERVER_KEY, _free_port, launch, stop
from openai import OpenAI

#: Replies short enough for a test, long enough to be interrupted while they speak.
LIMITS = ["--max-new-tokens", "48", "--max-speech-seconds", "8"]
RATE = 24000


@pytest.fixture(scope="module")
def server(tmp_path_factory, _isolated_cache):
    port = _free_port()
    log = tmp_path_factory.mktemp("realtime") / "server.log"
    live = launch(["-m", "omni_app", "serve", "--model", "tiny", "--port", str(port), "--api-key", SERVER_KEY,
                   "--max-batch", "2", *LIMITS], f"http://127.0.0.1:{port}", log, "/health")
    yield live
    stop(live, "realtime-server.log")


@pytest.fixture(scope="module")
def question(tmp_path_factory) -> np.ndarray:
    """A spoken question (espeak-ng) as 24 kHz int16, with a second of silence after it."""
    wav = tmp_path_factory.mktemp("speech") / "q.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "What is the weather like today in the city?"], check=True)
    out = wav.with_name("q24.wav")
    subprocess.run(["sox", str(wav), "-r", str(RATE), "-c", "1", "-b", "16", str(out)], check=True)
    data, _ = sf.read(str(out), dtype="int16")
    return np.concatenate([np.zeros(RATE // 2, np.int16), data, np.zeros(RATE * 3 // 2, np.int16)])


def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=SERVER_KEY)


def speak(conn, audio: np.ndarray, chunk_ms: int = 40) -> None:
    step = RATE * chunk_ms // 1000
    for start in range(0, len(audio), step):
        conn.input_audio_buffer.append(audio=base64.b64encode(audio[start:start + step].tobytes()).decode())


def until(conn, kind: str, seen: list | None = None, timeout: float = 120):
    """Events up to and including the first of type ``kind`` (added to ``seen``)."""
    seen = [] if seen is None else seen
    deadline = time.time() + timeout
    while time.time() < deadline:
        event = conn.recv()
        seen.append(event)
        if event.type == kind:
            return event
    raise AssertionError(f"no {kind} within {timeout} s; saw {[e.type for e in seen]}")


def ask(conn, text: str) -> None:
    """A typed user message, and a request for the reply."""
    conn.conversation.item.create(item={"type": "message", "role": "user",
                                        "content": [{"type": "input_text", "text": text}]})
    conn.response.create()


def types(events) -> list[str]:
    return [e.type for e in events]


def test_a_spoken_turn_is_heard_by_the_server_and_answered_in_speech_as_it_is_made(server, question):
    with client(server).realtime.connect(model="tiny") as conn:
        created = conn.recv()
        assert created.type == "session.created" and created.session.audio.output.voice
        conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": 500}}}})
        until(conn, "session.updated")
        speak(conn, question)
        seen: list = []
        done = until(conn, "response.done", seen)
        kinds = types(seen)
        for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "conversation.item.added", "response.created",
                     "response.output_item.added", "response.output_audio_transcript.delta"):
            assert kind in kinds, kinds
        assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("response.created")
        deltas = [e for e in seen if e.type == "response.output_audio.delta"]
        assert deltas and kinds.index("response.output_audio.delta") < kinds.index("response.done")
        assert sum(len(base64.b64decode(d.delta)) for d in deltas) > RATE  # over half a second of speech
        assert done.response.status in ("completed", "incomplete") and done.response.usage.output_tokens > 0
        stopped = next(e for e in seen if e.type == "input_audio_buffer.speech_stopped")
        # The turn ended at the speech's end plus the pause (0.5 s), not at the end of the audio sent.
        speech_end_ms = (len(question) - RATE * 3 // 2) * 1000 // RATE
        assert speech_end_ms < stopped.audio_end_ms < speech_end_ms + 1200


def test_speech_during_a_reply_cancels_it(server, question):
    with client(server).realtime.connect(model="tiny") as conn:
        until(conn, "session.created")
        ask(conn, "Tell me a long story.")
        seen: list = []
        until(conn, "response.output_audio.delta", seen)
        speak(conn, question[: RATE * 2])  # the person starts talking over the reply
        started = until(conn, "input_audio_buffer.speech_started", seen)
        done = until(conn, "response.done", seen)
        assert done.response.status == "cancelled" and done.response.status_details.reason == "turn_detected"
        after = seen[seen.index(started):]
        # Within one step of the model: at most one more chunk of speech went out.
        assert sum(e.type == "response.output_audio.delta" for e in after) <= 1, types(after)
        assert started.audio_start_ms >= 0


def test_truncate_keeps_what_was_heard(server):
    with client(server).realtime.connect(model="tiny") as conn:
        until(conn, "session.created")
        ask(conn, "Say something.")
        seen: list = []
        done = until(conn, "response.done", seen)
        item = done.response.output[0]
        played = sum(len(base64.b64decode(e.delta)) // 2 for e in seen if e.type == "response.output_audio.delta")
        assert played > 0
        conn.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=played * 1000 // RATE + 500)
        error = until(conn, "error")
        assert error.error.param == "audio_end_ms"  # past the end of what was said
        conn.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=200)
        truncated = until(conn, "conversation.item.truncated")
        assert truncated.item_id == item.id and truncated.audio_end_ms == 200
        # The conversation goes on from what was heard.
        ask(conn, "And then?")
        assert until(conn, "response.done").response.status in ("completed", "incomplete")


def test_a_text_item_and_an_image_item_get_replies(server, media_dir):
    image = "data:image/jpeg;base64," + base64.b64encode((media_dir / "photo.jpg").read_bytes()).decode()
    with client(server).realtime.connect(model="tiny") as conn:
        until(conn, "session.created")
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"], "max_output_tokens": 5})
        assert until(conn, "session.updated").session.max_output_tokens == 5
        ask(conn, "Hello!")
        seen: list = []
        done = until(conn, "response.done", seen)
        assert "response.output_text.delta" in types(seen) and "response.output_audio.delta" not in types(seen)
        assert done.response.output[0].content[0].text
        assert done.response.status == "incomplete" and done.response.usage.output_token_details.text_tokens <= 5
        conn.session.update(session={"type": "realtime", "output_modalities": ["audio"], "max_output_tokens": "inf"})
        until(conn, "session.updated")
        conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_image", "image_url": image}, {"type": "input_text", "text": "What is this?"}]})
        added = until(conn, "conversation.item.added")
        assert [c.type for c in added.item.content] == ["input_image", "input_text"]
        conn.response.create()
        seen = []
        assert until(conn, "response.done", seen).response.status in ("completed", "incomplete")
        assert "response.output_audio.delta" in types(seen)


def test_bad_events_get_an_error_naming_the_field_and_the_session_goes_on(server):
    with client(server).realtime.connect(model="tiny") as conn:
        until(conn, "session.created")
        cases = [
            ({"type": "no.such.event"}, "type"),
            ({"type": "session.update", "session": {"tools": [{"type": "function", "name": "f"}]}}, "session.tools"),
            ({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}},
             "session.audio.input.format"),
            ({"type": "session.update", "session": {"audio": {"output": {"voice": "Nobody"}}}},
             "session.audio.output.voice"),
            ({"type": "input_audio_buffer.append", "audio": "not base64!"}, "audio"),
            ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}, "audio"),
            ({"type": "conversation.item.truncate", "item_id": "nope", "audio_end_ms": 5}, "item_id"),
            ({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                           "content": [{"type": "input_video"}]}},
             "item.content[0].type"),
        ]
        for event, param in cases:
            conn.send(event)
            error = until(conn, "error")
            assert error.error.param == param, (event["type"], error.error)
            assert error.error.message and "Traceback" not in error.error.message
        conn.send({"type": "input_audio_buffer.commit"})
        assert until(conn, "error").error.code == "input_audio_buffer_commit_empty"
        # Without turn detection the client commits; a buffer longer than a turn can be is refused.
        conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        assert until(conn, "session.updated").session.audio.input.turn_detection is None
        minute = base64.b64encode(np.zeros(RATE * 60, np.int16).tobytes()).decode()
        conn.input_audio_buffer.append(audio=minute)
        conn.input_audio_buffer.append(audio=minute)
        conn.input_audio_buffer.append(audio=minute)
        error = until(conn, "error")
        assert error.error.code == "input_audio_buffer_too_long" and "120 s" in error.error.message
        conn.input_audio_buffer.clear()
        until(conn, "input_audio_buffer.cleared")
        ask(conn, "Still there?")
        assert until(conn, "response.done").response.status in ("completed", "incomplete")


def test_invalid_json_gets_an_error_and_the_session_goes_on(server):
    from websockets.sync.client import connect

    url = server.url.replace("http://", "ws://") + "/v1/realtime?model=tiny"
    with connect(url, additional_headers={"Authorization": f"Bearer {SERVER_KEY}"}) as ws:
        assert '"session.created"' in ws.recv(timeout=30)
        ws.send("{not json")
        assert '"invalid_json"' in ws.recv(timeout=30)
        ws.send('{"type": "input_audio_buffer.clear"}')
        assert '"input_audio_buffer.cleared"' in ws.recv(timeout=30)


def test_the_key_is_required_as_a_header_or_as_the_browsers_subprotocol(server):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = server.url.replace("http://", "ws://") + "/v1/realtime?model=tiny"
    with pytest.raises(InvalidStatus) as refused:
        connect(url)
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        connect(url, additional_headers={"Authorization": "Bearer wrong"})
    with connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{SERVER_KEY}"]) as ws:
        assert ws.subprotocol == "realtime"
        assert '"session.created"' in ws.recv(timeout=30)


def test_two_connections_at_once_stay_apart(server):
    results: dict = {}

    def talk(name: str, text: str) -> None:
        with client(server).realtime.connect(model="tiny") as conn:
            created = until(conn, "session.created")
            ask(conn, text)
            seen: list = []
            until(conn, "response.done", seen)
            results[name] = (created.session.id, seen)

    threads = [threading.Thread(target=talk, args=(n, t)) for n, t in (("a", "Hello"), ("b", "Goodbye"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    (sa, a), (sb, b) = results["a"], results["b"]
    assert sa != sb
    ids = [{getattr(e, "response_id", None) for e in events} - {None} for events in (a, b)]
    assert len(ids[0]) == 1 and len(ids[1]) == 1 and ids[0] != ids[1]  # each saw its own reply only
    for events in (a, b):
        item = next(e for e in events if e.type == "conversation.item.added").item
        assert item.content[0].text in ("Hello", "Goodbye")
        assert [e for e in events if e.type == "response.done"][0].response.status in ("completed", "incomplete")
    items = [next(e for e in events if e.type == "conversation.item.added").item.content[0].text for events in (a, b)]
    assert items == ["Hello", "Goodbye"]


class Recording:
    """The model in this process, noting each request it is asked (what the next turn's context was)."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.requests: list = []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def stream(self, request, cancel=None):
        self.requests.append(request)
        return self._backend.stream(request, cancel)


def test_after_a_truncate_the_next_turn_knows_only_what_was_heard(service):
    import json

    from starlette.testclient import TestClient

    from omni_app.config import GenerationLimits
    from omni_app.engine.local import LocalBackend
    from omni_app.serve.server import ServerSettings, make_app

    backend = Recording(LocalBackend(service))
    app = make_app(backend, ServerSettings(limits=GenerationLimits(max_new_tokens=40, max_speech_seconds=4)))

    def until_type(ws, kind):
        while (event := json.loads(ws.receive_text()))["type"] != kind:
            pass
        return event

    with TestClient(app) as http, http.websocket_connect("/v1/realtime?model=tiny") as ws:
        until_type(ws, "session.created")
        ws.send_text(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story."}]}}))
        ws.send_text(json.dumps({"type": "response.create"}))
        done = until_type(ws, "response.done")["response"]
        said = done["output"][0]["content"][0]["transcript"]
        assert len(said) >= 8
        ws.send_text(json.dumps({"type": "conversation.item.truncate", "item_id": done["output"][0]["id"],
                                 "content_index": 0, "audio_end_ms": 1000}))  # a quarter of its 4 s was heard
        until_type(ws, "conversation.item.truncated")
        ws.send_text(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Go on."}]}}))
        ws.send_text(json.dumps({"type": "response.create"}))
        until_type(ws, "response.done")
    heard = backend.requests[-1].conversation.turns[1]
    assert heard.role == "assistant" and said.startswith(heard.text) and 0 < len(heard.text) < len(said)
    assert abs(len(heard.text) - len(said) / 4) <= max(len(w) for w in said.split()) + 1


def test_what_was_heard_is_that_share_of_the_text_without_half_words():
    from omni_app.serve.realtime_wire import heard_share

    assert heard_share("one two three four five six seven eight", 0.5) == "one two three four"
    assert heard_share("one two three four five six seven eight", 0.42) == "one two three"  # not "fo"
    assert heard_share("今天天气很好我们去公园吧", 0.5) == "今天天气很好"
    assert heard_share("anything", 0.0) == "" and heard_share("all of it", 1.0) == "all of it"


def test_a_long_conversation_keeps_its_latest_turns_only(service, monkeypatch):
    import json

    from starlette.testclient import TestClient

    from omni_app.config import GenerationLimits
    from omni_app.engine.local import LocalBackend
    from omni_app.serve import realtime
    from omni_app.serve.server import ServerSettings, make_app

    monkeypatch.setattr(realtime, "MAX_TURNS", 3)
    backend = Recording(LocalBackend(service))
    app = make_app(backend, ServerSettings(limits=GenerationLimits(max_new_tokens=4, max_speech_seconds=0.5)))
    with TestClient(app) as http, http.websocket_connect("/v1/realtime?model=tiny") as ws:
        json.loads(ws.receive_text())
        ids = []
        for k in range(5):
            ws.send_text(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"turn {k}"}]}}))
            while (event := json.loads(ws.receive_text()))["type"] != "conversation.item.done":
                pass
            ids.append(event["item"]["id"])
        ws.send_text(json.dumps({"type": "conversation.item.truncate", "item_id": ids[0], "audio_end_ms": 0}))
        while (event := json.loads(ws.receive_text()))["type"] != "error":
            pass
        assert event["error"]["code"] == "item_not_found"  # gone with the oldest turns
        ws.send_text(json.dumps({"type": "response.create"}))
        while json.loads(ws.receive_text())["type"] != "response.done":
            pass
    assert [t.text for t in backend.requests[-1].conversation.turns] == ["turn 2", "turn 3", "turn 4"]
