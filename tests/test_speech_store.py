"""A reply's speech on its way to the page: records, resending, and the WAV files' lifetime."""

from __future__ import annotations

import base64
import json
import wave

import numpy as np
import pytest

from omni_app.events import AudioChunk
from omni_app.ui.speech import SpeechStore


@pytest.fixture
def store():
    store = SpeechStore(files_per_tab=2, max_files=5)
    yield store
    store.close()


def chunk(n: int, value: int = 100) -> AudioChunk:
    return AudioChunk(24000, np.arange(n, dtype=np.int16) + value)


def records(value: str) -> tuple[dict, list[dict]]:
    head, *rest = [json.loads(line) for line in value.split("\n")]
    return head, rest


def test_each_value_carries_the_newest_chunk_with_its_sequence_and_rate(store):
    reply = store.new_reply(True, {"at": 12.5}, max_seconds=2.0)
    head, rest = records(reply.value)
    assert head == {"reply": reply.id, "speak": True, "turn": {"at": 12.5}} and rest == []
    reply.start()
    for k in range(3):
        head, (record,) = records(reply.add(chunk(12000, k)))
        assert record["seq"] == k and record["sr"] == 24000 and record["rate"] > 0
        assert record["left"] == pytest.approx(2.0 - 0.5 * (k + 1))
        assert np.array_equal(np.frombuffer(base64.b64decode(record["pcm"]), "<i2"), chunk(12000, k).samples)
    _, (end,) = records(reply.finish())
    assert end == {"end": 3}
    assert len(reply.samples()) == 36000


def test_the_rate_is_the_pace_after_the_first_chunk_and_the_next_reply_starts_from_it(store, monkeypatch):
    # The model takes 2 s to its first chunk (prompt, first codes), then makes 0.5 s of speech
    # every 0.4 s: 1.25x real time. The wait for the first chunk is no measure of that pace.
    clock = [100.0]
    monkeypatch.setattr("omni_app.ui.speech.time.monotonic", lambda: clock[0])

    def rates(reply, first_at: float) -> list[float]:
        reply.start()
        found = []
        for k in range(3):
            clock[0] += first_at if k == 0 else 0.4
            found.append(records(reply.add(chunk(12000, k)))[1][0]["rate"])
        clock[0] += 2.0  # stopped a while after its last chunk: the pace is that of the chunks
        reply.finish()
        return found

    first = rates(store.new_reply(True, max_seconds=4.0), 2.0)
    assert first[0] == pytest.approx(0.25)  # nothing known yet: the cautious overall rate
    assert first[1:] == [pytest.approx(1.25), pytest.approx(1.25)]
    assert store.recent_rate == pytest.approx(1.25)
    # The next reply's first chunk comes with the pace of the last one.
    assert rates(store.new_reply(True, max_seconds=4.0), 3.0)[0] == pytest.approx(1.25)


def test_a_page_that_missed_chunks_gets_them_again(store):
    reply = store.new_reply(True)
    sent = [records(reply.add(chunk(2400, k)))[1][0] for k in range(4)]
    again = [json.loads(line) for line in store.resend({"reply": reply.id, "start": 1, "stop": 3}).split("\n")]
    assert again == sent[1:3]
    reply.finish()
    tail = [json.loads(line) for line in store.resend({"reply": reply.id, "start": 3, "stop": None}).split("\n")]
    assert tail == [sent[3], {"end": 4}]
    assert store.resend({"reply": "no such reply", "start": 0}) == ""
    assert store.resend("garbage") == ""


def test_the_wav_holds_exactly_the_streamed_samples(store):
    reply = store.new_reply(True)
    for k in range(3):
        reply.add(chunk(5000, 1000 * k))
    path = store.save_wav("s1", "voice", reply)
    with wave.open(path) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        data = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert np.array_equal(data, reply.samples())
    assert store.save_wav("s1", "voice", store.new_reply(True)) is None  # no speech, no file


def test_files_are_bounded_and_go_with_their_session(store):
    def save(session, tab):
        reply = store.new_reply(True)
        reply.add(chunk(100))
        return store.save_wav(session, tab, reply)

    voice = [save("s1", "voice") for _ in range(3)]
    image = save("s1", "image")
    assert store.files("s1") == [p for p in store.files() if str(p) in voice[1:] + [image]]
    assert not any(str(p) == voice[0] for p in store.folder.iterdir())  # the tab keeps its latest two
    others = [save(f"s{k}", "voice") for k in range(2, 6)]
    assert len(store.files()) == 5 and str(store.files()[-1]) == others[-1]  # the oldest beyond the cap went
    store.drop_session("s5")
    assert store.files("s5") == [] and len(list(store.folder.iterdir())) == 4
    store.close()
    assert not store.folder.exists()
