"""Tab callbacks called directly, as gradio calls them, with real media and the tiny model."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time

import gradio as gr
import numpy as np
import pytest
import soundfile as sf

from omni_app.config import GenerationLimits, MediaLimits
from omni_app.engine.local import LocalBackend
from omni_app.ui.app import build_app
from omni_app.ui.context import AppContext

LIMITS = GenerationLimits(max_new_tokens=16, max_speech_seconds=1.5)


@pytest.fixture(scope="module")
def context(service):
    context = AppContext(LocalBackend(service), LIMITS, MediaLimits())
    yield context
    context.speech.close()


@pytest.fixture(scope="module")
def app(context):
    demo = build_app(context)
    names = [f.name for f in demo.fns.values() if f.fn is not None and f.name != "<lambda>"]
    assert len(names) == len(set(names)), "handler names must be unique to be looked up here"
    return {f.name: f.fn for f in demo.fns.values() if f.fn is not None}


def session(name="s1"):
    return gr.Request(session_hash=name)


def speech_records(values) -> tuple[list[dict], dict | None]:
    """The chunk records the page's player receives (each once, by sequence number) and the end record."""
    chunks, end = {}, None
    for value in values:
        if not isinstance(value, str) or not value:
            continue
        head, *records = [json.loads(line) for line in value.split("\n")]
        assert set(head) >= {"reply", "speak", "turn"}
        for record in records:
            if "end" in record:
                end = record
            else:
                chunks[record["seq"]] = record
    return [chunks[k] for k in sorted(chunks)], end


def pcm(record: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(record["pcm"]), "<i2")


def collect(outputs):
    """(histories, speech chunks as (rate, int16), statuses) from a reply's yields; checks the WAV."""
    chats, statuses, speech, wavs = [], [], [], []
    for chat, value, status, wav in outputs:
        if isinstance(chat, list):
            chats.append(chat)
        speech.append(value)
        if isinstance(status, str):
            statuses.append(status)
        if wav:
            wavs.append(wav)
    records, end = speech_records(speech)
    audio = [(r["sr"], pcm(r)) for r in records]
    assert [r["seq"] for r in records] == list(range(len(records)))
    if end is not None:
        assert end["end"] == len(records)
    if audio:
        # The replay/download WAV holds exactly the streamed samples.
        assert len(wavs) == 1
        data, rate = sf.read(wavs[0], dtype="int16")
        assert rate == 24000 and np.array_equal(data, np.concatenate([a for _, a in audio]))
    else:
        assert wavs == []
    return chats, audio, statuses


def test_text_turn_streams_history_and_int16_audio(app):
    chats, audio, statuses = collect(app["reply_to_text"]("Hello there", "Chelsie", True, request=session("text")))
    assert len(chats) > 2
    assert [len(c) for c in chats][-1] == 2 and chats[-1][0]["content"] == "Hello there"
    lengths = [len(c[-1]["content"]) for c in chats]
    assert lengths == sorted(lengths) and lengths[-1] > 0  # the reply grows
    assert len(audio) >= 2 and all(sr == 24000 and s.dtype == np.int16 for sr, s in audio)
    assert "first audio" in statuses[-1]
    # Memory per session: the next turn is appended to the same history.
    chats2, _, _ = collect(app["reply_to_text"]("And then?", "Ethan", False, request=session("text")))
    assert len(chats2[-1]) == 4
    other, _, _ = collect(app["reply_to_text"]("Hi", "Ethan", False, request=session("other")))
    assert len(other[-1]) == 2


def test_speech_off_gives_no_audio(app):
    _, audio, _ = collect(app["reply_to_text"]("Quiet", "Chelsie", False, request=session("quiet")))
    assert audio == []


def test_errors_become_gr_error_and_history_survives(app, media_dir, tmp_path):
    chats, _, _ = collect(app["reply_to_text"]("First", "Chelsie", False, request=session("err")))
    with pytest.raises(gr.Error, match="Type a message"):
        list(app["reply_to_text"]("  ", "Chelsie", False, request=session("err")))
    silent = (16000, np.zeros(16000, np.int16))
    with pytest.raises(gr.Error, match="silent"):
        list(app["reply_to_recording"](silent, "Chelsie", False, request=session("err")))
    with pytest.raises(gr.Error, match="Add an image"):
        list(app["answer"](None, "What?", None, "Chelsie", False, request=session("err")))
    with pytest.raises(gr.Error, match="Unknown voice"):
        list(app["reply_to_text"]("Hello", "Nobody", True, request=session("err")))
    after, _, _ = collect(app["reply_to_text"]("Second", "Chelsie", False, request=session("err")))
    assert [m["content"] for m in after[-1] if m["role"] == "user"] == ["First", "Second"]


def test_image_question_by_text_and_voice(app, media_dir):
    from PIL import Image

    image = Image.open(media_dir / "photo.jpg")
    chats, audio, _ = collect(app["answer"](image, "What is this?", None, "Ethan", True, request=session("img")))
    assert chats[-1][-1]["role"] == "assistant" and chats[-1][-1]["content"]
    assert audio
    data, rate = sf.read(str(media_dir / "speech.wav"), dtype="int16")
    chats, _, _ = collect(app["answer"](image, "", (rate, data), "Ethan", False, request=session("img")))
    assert "spoken question" in chats[-1][-2]["content"]


def speech_chunks(tmp_path, text: str, pause_s: float = 1.5):
    """espeak-ng speech at 48 kHz int16 followed by silence, cut like a browser microphone."""
    wav = tmp_path / "turn.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
    raw = tmp_path / "turn48.wav"
    subprocess.run(["sox", str(wav), "-r", "48000", "-c", "1", "-b", "16", str(raw), "pad", "0.3", str(pause_s)],
                   check=True)
    data, rate = sf.read(str(raw), dtype="int16")
    step = rate // 4
    return [(rate, data[i:i + step]) for i in range(0, len(data), step)]


def test_voice_turn_by_voice_activity(app, tmp_path):
    turns = []
    for chunk in speech_chunks(tmp_path, "What is the weather like today?"):
        turn, _ = app["on_mic"](chunk, None, "voice", session("vad"))[:2]
        if not isinstance(turn, dict):
            turns.append(turn)
    assert turns == [1]
    chats, audio, _ = collect(app["reply_to_turn"]("Chelsie", True, session("vad")))
    assert chats[-1][0]["content"].startswith("(spoken")
    assert audio


def test_a_short_burst_stops_a_reply_but_is_no_turn(app, tmp_path):
    # A cough or a click: 150 ms of sound. It barges in (as any voice does) but nothing is answered.
    chunks = speech_chunks(tmp_path, "Hello there")
    rate, data = chunks[0][0], np.concatenate([c for _, c in chunks])
    start = int(0.3 * rate)  # the speech starts after the padding
    burst = np.concatenate([data[:start + int(0.15 * rate)], np.zeros(2 * rate, np.int16)])
    turns, barged = [], False
    for k in range(0, len(burst), rate // 4):
        turn, barge = app["on_mic"]((rate, burst[k:k + rate // 4]), None, "voice", session("burst"))[:2]
        turns += [] if isinstance(turn, dict) else [turn]
        barged |= not isinstance(barge, dict)
    assert barged and turns == []


def test_a_turn_begun_in_one_tab_is_not_finished_in_it_after_a_switch(app, tmp_path):
    chunks = speech_chunks(tmp_path, "Tell me what the weather is like today")
    half = len(chunks) // 3
    for chunk in chunks[:half]:  # speaking in the voice chat ...
        app["on_mic"](chunk, None, "voice", session("switch"))
    app["on_mic"](chunks[half], None, "video", session("switch"))  # ... then the video chat is shown
    silence = (chunks[0][0], np.zeros(chunks[0][0] // 4, np.int16))
    heard = [app["on_mic"](silence, None, "voice", session("switch")) for _ in range(8)]  # back, silent
    assert all(isinstance(updates[0], dict) for updates in heard)  # no half question answered there


def test_speaking_during_a_reply_stops_it(service, tmp_path):
    # Long limits: without barge-in this reply would run for a minute of speech.
    long_context = AppContext(LocalBackend(service), GenerationLimits(max_new_tokens=2000, max_speech_seconds=60),
                              MediaLimits())
    long = build_app(long_context)
    handlers = {f.name: f.fn for f in long.fns.values() if f.fn is not None}
    chunks = speech_chunks(tmp_path, "Tell me a story please.")
    for chunk in chunks:
        handlers["on_mic"](chunk, None, "voice", session("barge"))
    reply = handlers["reply_to_turn"]("Chelsie", True, session("barge"))
    assert any('"seq"' in out[1] for out in reply), "the reply never spoke"  # stops at the first audio
    barged = None
    for chunk in chunks:
        _, barge = handlers["on_mic"](chunk, None, "voice", session("barge"))[:2]
        if not isinstance(barge, dict):
            barged = barge
    assert barged is not None
    rest = list(reply)
    status = [s for _, _, s, _ in rest if isinstance(s, str)][-1]
    assert "stopped" in status
    seconds = float(status.split(" s of speech")[0].rsplit("· ", 1)[-1])
    assert seconds < 30  # cut off well before the 60 s the reply was allowed
    long_context.speech.close()


def test_the_one_microphone_talks_to_the_chat_tab_on_show(app, tmp_path):
    chunks = speech_chunks(tmp_path, "Which tab am I in?")
    for tab, index in (("video", 2), ("voice", 0), ("image", None)):
        heard = [app["on_mic"](chunk, None, tab, session(f"route-{tab}")) for chunk in chunks]
        bumped = {k for updates in heard for k, update in enumerate(updates) if not isinstance(update, dict)}
        assert bumped == ({index, index + 1} if index is not None else set()), tab


def test_video_turn_uses_webcam_frames(app, tmp_path, media_dir):
    from omni_app.media import load_video

    clip = load_video(media_dir / "mute.mp4")
    preview = app["on_frame"](clip.frames[0], session("cam"))
    assert preview.shape[0] % 28 == 0 and preview.shape[1] % 28 == 0
    for chunk in speech_chunks(tmp_path, "What do you see?"):
        for frame in clip.frames[:1]:
            app["on_frame"](frame, session("cam"))
        app["on_mic"](chunk, None, "video", session("cam"))
    chats, audio, _ = collect(app["video_reply_to_turn"]("Chelsie", True, session("cam")))
    assert chats[-1][0]["content"].startswith("(video")
    assert audio


def test_voice_cloning_tab_creates_speaks_and_downloads(app, tmp_path):
    wav = tmp_path / "ref.wav"
    subprocess.run(["espeak-ng", "-s", "140", "-w", str(wav),
                    "This is a reference recording. It has a few seconds of speech, enough to render a voice."],
                   check=True)
    data, rate = sf.read(str(wav), dtype="int16")
    updates = app["create_voice"]((rate, data), "Chelsie", "Reader", False, session("tts"))
    assert updates[0]["value"] == "Reader" and "Reader" in updates[0]["choices"]
    assert all("Reader" in u["choices"] for u in updates[2:])  # the chat tabs can pick it too
    outputs = list(app["read"]("Hello. This is exactly what I typed.", "Reader", request=session("tts")))
    records, end = speech_records([value for value, _, _, _ in outputs])
    assert records and end["end"] == len(records) and all(r["sr"] == 24000 for r in records)
    *_, (_, status, replay, download) = outputs
    assert replay == download and "first audio" in status
    data, rate = sf.read(download, dtype="int16")
    assert rate == 24000 and np.array_equal(data, np.concatenate([pcm(r) for r in records]))
    chats, _, _ = collect(app["reply_to_text"]("Hi", "Reader", True, request=session("tts")))
    assert chats
    with pytest.raises(gr.Error, match="at least 3 s"):
        app["create_voice"]((16000, np.full(8000, 3000, np.int16)), "Chelsie", "Short", False, session("tts"))
    with pytest.raises(gr.Error, match="Type the text"):
        list(app["read"]("  ", "Reader", request=session("tts")))
    compare = list(app["read_with_stock"]("Compare this.", "Reader", request=session("tts")))
    assert speech_records([value for value, _, _, _ in compare])[0]


def test_inside_tab_explains_the_sessions_last_turn(app, media_dir):
    with pytest.raises(gr.Error, match="No turn yet"):
        app["explain_last"](session("inside"))
    collect(app["reply_to_text"]("Explain me", "Chelsie", True, request=session("inside")))
    summary, tokens, rope, audio, vision, dit, timeline = app["explain_last"](session("inside"))
    assert "This turn:" in summary
    assert all(p is not None and p.ndim == 3 for p in (tokens, rope, dit, timeline))
    assert audio is None and vision is None  # a typed turn has no audio or picture
    outputs = app["explain_new"]("What is this?", None, None, str(media_dir / "talking.mp4"), session("inside2"))
    assert all(p is not None for p in outputs[1:])


def test_clear_during_a_reply_keeps_the_history_cleared(app):
    reply = app["reply_to_text"]("Long answer please", "Chelsie", True, request=session("clear"))
    next(reply)
    next(reply)
    app["on_clear"](session("clear"))
    list(reply)  # the reply runs out after the clear
    again, _, _ = collect(app["reply_to_text"]("Fresh start", "Chelsie", False, request=session("clear")))
    assert [m["content"] for m in again[-1] if m["role"] == "user"] == ["Fresh start"]


def test_stop_drops_spoken_turns_still_waiting(app, tmp_path):
    for chunk in speech_chunks(tmp_path, "Are you there?"):
        app["on_mic"](chunk, None, "voice", session("stopq"))
    app["on_stop"](session("stopq"))
    assert list(app["reply_to_turn"]("Chelsie", True, session("stopq"))) == []


def test_speaking_while_a_finished_reply_plays_pauses_it(app, tmp_path):
    collect(app["reply_to_text"]("Say something", "Chelsie", True, request=session("late")))
    barges = [app["on_mic"](c, None, "voice", session("late"))[1] for c in speech_chunks(tmp_path, "Wait a moment.")]
    assert any(not isinstance(b, dict) for b in barges)


def test_long_speech_is_cut_into_turns_without_losing_the_rest(tmp_path):
    from omni_app.vad import TurnDetector, TurnEnded, VadOptions

    detector = TurnDetector(VadOptions(max_turn_seconds=1.0))
    ended = []
    for chunk in speech_chunks(tmp_path, "This is a rather long sentence that goes on for quite a while."):
        ended += [e for e in detector.feed(*chunk) if isinstance(e, TurnEnded)]
    assert len(ended) >= 3
    assert sum(e.seconds for e in ended) > 2.5


def test_status_counts_from_the_moment_the_browser_sent_the_turn(app):
    sent = time.time() - 1.5  # the page stamped Enter 1.5 s before the reply could start
    outputs = list(app["reply_to_text"]("Hello there", "Chelsie", True, session("honest"), sent_at=sent))
    head = json.loads(outputs[0][1].split("\n")[0])
    assert head["turn"] == {"at": sent}  # the page measures what it heard on its own clock
    status = outputs[-1][2]
    waited = float(re.search(r"waited ([0-9.]+) s for the model", status).group(1))
    after_turn = float(re.search(r"\(([0-9.]+) s after your turn ended\)", status).group(1))
    assert 1.5 <= waited < 60 and after_turn > waited
    # A browser with a wrong clock does not make up a wait.
    outputs = list(app["reply_to_text"]("Hi", "Chelsie", False, session("honest"), sent_at=time.time() + 7200))
    assert "waited 1" not in outputs[-1][2] and "for the model" in outputs[-1][2]


def test_a_spoken_turn_tells_the_page_when_it_ended(app, tmp_path):
    for chunk in speech_chunks(tmp_path, "How are you today?"):
        app["on_mic"](chunk, None, "voice", session("ago"))
    time.sleep(0.3)
    outputs = list(app["reply_to_turn"]("Chelsie", False, session("ago")))
    head = json.loads(outputs[0][1].split("\n")[0])
    assert head["speak"] is False and head["turn"]["ago"] >= 0.3
    assert "waited 0" in outputs[-1][2] or "waited" in outputs[-1][2]


def test_the_end_of_turn_pause_is_a_setting(app, tmp_path):
    first, second = tmp_path / "a.wav", tmp_path / "b.wav"
    subprocess.run(["espeak-ng", "-w", str(first), "I would like to know"], check=True)
    subprocess.run(["espeak-ng", "-w", str(second), "what the weather is like"], check=True)
    joined = tmp_path / "joined.wav"
    # A 0.8 s pause in the middle of the question, 1.8 s of silence after it.
    subprocess.run(["sox", str(first), "-r", "48000", "-c", "1", "-b", "16", str(tmp_path / "a48.wav"), "pad", "0.3",
                    "0.8"], check=True)
    subprocess.run(["sox", str(second), "-r", "48000", "-c", "1", "-b", "16", str(tmp_path / "b48.wav"), "pad", "0",
                    "1.8"], check=True)
    subprocess.run(["sox", str(tmp_path / "a48.wav"), str(tmp_path / "b48.wav"), str(joined)], check=True)
    data, rate = sf.read(str(joined), dtype="int16")
    chunks = [(rate, data[i:i + rate // 10]) for i in range(0, len(data), rate // 10)]
    turns = {}
    for pause_ms in (400, 1200):
        name = f"pause{pause_ms}"
        heard = [app["on_mic"](c, pause_ms, "voice", session(name)) for c in chunks]
        turns[pause_ms] = sum(not isinstance(turn, dict) for turn, *_ in heard)
        app["on_clear"](session(name))
    assert turns == {400: 2, 1200: 1}
    with pytest.raises(gr.Error, match="between 100 and 2000 ms"):
        app["on_mic"](chunks[0], 20, "voice", session("pause-bad"))


def test_speech_files_go_when_the_browser_session_ends(app, context, media_dir):
    from PIL import Image

    collect(app["reply_to_text"]("Keep my words", "Chelsie", True, request=session("files")))
    collect(app["answer"](Image.open(media_dir / "photo.jpg"), "And this?", None, "Chelsie", True,
                          request=session("files")))
    store = context.speech
    kept = store.files("files")
    assert len(kept) == 2 and all(p.is_file() for p in kept)
    app["forget"](session("files"))
    assert store.files("files") == [] and not any(p.exists() for p in kept)


def test_no_speaking_tab_streams_audio_through_gradio(app, context):
    """Speech reaches the page only through the Web Audio players: no streaming gr.Audio output (HLS/AAC)."""
    demo = build_app(context)
    outputs = [block for fn in demo.fns.values() for block in fn.outputs]
    assert not [b for b in outputs if isinstance(b, gr.Audio) and b.streaming]
    players = {b.elem_id for b in outputs if isinstance(b, gr.HTML) and (b.elem_id or "").endswith("-speech")}
    assert players == {"voice-speech", "video-speech", "image-speech", "tts-speech"}


def test_voice_cloning_shows_its_place_while_waiting_and_stop_ends_the_wait(service):
    from omni_app.api import Request
    from omni_app.conversation import Conversation
    from omni_app.engine.service import ModelService
    from omni_app.engine.streaming import StreamingEngine
    from omni_app.events import TextDelta

    serial = ModelService(service.loaded, StreamingEngine(), max_batch=1)  # one reply fills the model
    context = AppContext(LocalBackend(serial), LIMITS, MediaLimits())
    app = {f.name: f.fn for f in build_app(context).fns.values() if f.fn is not None}
    holding = serial.stream(Request(Conversation().add_user("Hold the model"), voice=None,
                                     limits=GenerationLimits(max_new_tokens=4000), seed=1))
    assert isinstance(next(holding), TextDelta)  # the model is busy from here on
    try:
        reading = app["read"]("Read this when it is my turn.", "Chelsie", session("tts-wait"))
        statuses = [next(reading)[1], next(reading)[1]]
        assert statuses == ["Speaking…", "⏳ Waiting for the model: 1 request ahead."]
        app["tts_on_stop"](session("tts-wait"))
        rest = list(reading)
    finally:
        holding.close()
        context.speech.close()
    assert "stopped" in rest[-1][1] and rest[-1][2] is None  # ended without speech, nothing to replay
