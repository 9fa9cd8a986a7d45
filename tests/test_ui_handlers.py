"""Tab callbacks called directly, as gradio calls them, with real media and the tiny model."""

from __future__ import annotations

import subprocess

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
def app(service):
    demo = build_app(AppContext(LocalBackend(service), LIMITS, MediaLimits()))
    names = [f.name for f in demo.fns.values() if f.fn is not None and f.name != "<lambda>"]
    assert len(names) == len(set(names)), "handler names must be unique to be looked up here"
    return {f.name: f.fn for f in demo.fns.values() if f.fn is not None}


def session(name="s1"):
    return gr.Request(session_hash=name)


def collect(outputs):
    chats, audio, statuses = [], [], []
    for chat, sound, status in outputs:
        if isinstance(chat, list):
            chats.append(chat)
        if isinstance(sound, tuple):
            audio.append(sound)
        if isinstance(status, str):
            statuses.append(status)
    return chats, audio, statuses


def test_text_turn_streams_history_and_int16_audio(app):
    chats, audio, statuses = collect(app["reply_to_text"]("Hello there", "Chelsie", True, session("text")))
    assert len(chats) > 2
    assert [len(c) for c in chats][-1] == 2 and chats[-1][0]["content"] == "Hello there"
    lengths = [len(c[-1]["content"]) for c in chats]
    assert lengths == sorted(lengths) and lengths[-1] > 0  # the reply grows
    assert len(audio) >= 2 and all(sr == 24000 and s.dtype == np.int16 for sr, s in audio)
    assert "first audio" in statuses[-1]
    # Memory per session: the next turn is appended to the same history.
    chats2, _, _ = collect(app["reply_to_text"]("And then?", "Ethan", False, session("text")))
    assert len(chats2[-1]) == 4
    other, _, _ = collect(app["reply_to_text"]("Hi", "Ethan", False, session("other")))
    assert len(other[-1]) == 2


def test_speech_off_gives_no_audio(app):
    _, audio, _ = collect(app["reply_to_text"]("Quiet", "Chelsie", False, session("quiet")))
    assert audio == []


def test_errors_become_gr_error_and_history_survives(app, media_dir, tmp_path):
    chats, _, _ = collect(app["reply_to_text"]("First", "Chelsie", False, session("err")))
    with pytest.raises(gr.Error, match="Type a message"):
        list(app["reply_to_text"]("  ", "Chelsie", False, session("err")))
    silent = (16000, np.zeros(16000, np.int16))
    with pytest.raises(gr.Error, match="silent"):
        list(app["reply_to_recording"](silent, "Chelsie", False, session("err")))
    with pytest.raises(gr.Error, match="Add an image"):
        list(app["answer"](None, "What?", None, "Chelsie", False, session("err")))
    with pytest.raises(gr.Error, match="Unknown voice"):
        list(app["reply_to_text"]("Hello", "Nobody", True, session("err")))
    after, _, _ = collect(app["reply_to_text"]("Second", "Chelsie", False, session("err")))
    assert [m["content"] for m in after[-1] if m["role"] == "user"] == ["First", "Second"]


def test_image_question_by_text_and_voice(app, media_dir):
    from PIL import Image

    image = Image.open(media_dir / "photo.jpg")
    chats, audio, _ = collect(app["answer"](image, "What is this?", None, "Ethan", True, session("img")))
    assert chats[-1][-1]["role"] == "assistant" and chats[-1][-1]["content"]
    assert audio
    data, rate = sf.read(str(media_dir / "speech.wav"), dtype="int16")
    chats, _, _ = collect(app["answer"](image, "", (rate, data), "Ethan", False, session("img")))
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
        turn, _ = app["on_mic"](chunk, session("vad"))
        if not isinstance(turn, dict):
            turns.append(turn)
    assert turns == [1]
    chats, audio, _ = collect(app["reply_to_turn"]("Chelsie", True, session("vad")))
    assert chats[-1][0]["content"].startswith("(spoken")
    assert audio


def test_speaking_during_a_reply_stops_it(service, tmp_path):
    # Long limits: without barge-in this reply would run for a minute of speech.
    long = build_app(AppContext(LocalBackend(service), GenerationLimits(max_new_tokens=2000, max_speech_seconds=60),
                                MediaLimits()))
    handlers = {f.name: f.fn for f in long.fns.values() if f.fn is not None}
    chunks = speech_chunks(tmp_path, "Tell me a story please.")
    for chunk in chunks:
        handlers["on_mic"](chunk, session("barge"))
    reply = handlers["reply_to_turn"]("Chelsie", True, session("barge"))
    assert any(isinstance(out[1], tuple) for out in reply), "the reply never spoke"  # stops at the first audio
    barged = None
    for chunk in chunks:
        _, barge = handlers["on_mic"](chunk, session("barge"))
        if not isinstance(barge, dict):
            barged = barge
    assert barged is not None
    rest = list(reply)
    status = [s for _, _, s in rest if isinstance(s, str)][-1]
    assert "stopped" in status
    seconds = float(status.split(" s of speech")[0].rsplit("· ", 1)[-1])
    assert seconds < 30  # cut off well before the 60 s the reply was allowed


def test_video_turn_uses_webcam_frames(app, tmp_path, media_dir):
    from omni_app.media import load_video

    clip = load_video(media_dir / "mute.mp4")
    preview = app["on_frame"](clip.frames[0], session("cam"))
    assert preview.shape[0] % 28 == 0 and preview.shape[1] % 28 == 0
    for chunk in speech_chunks(tmp_path, "What do you see?"):
        for frame in clip.frames[:1]:
            app["on_frame"](frame, session("cam"))
        app["video_on_mic"](chunk, session("cam"))
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
    outputs = list(app["read"]("Hello. This is exactly what I typed.", "Reader", session("tts")))
    audio = [a for a, _, _ in outputs if isinstance(a, tuple)]
    assert audio and all(sr == 24000 and s.dtype == np.int16 for sr, s in audio)
    download = outputs[-1][2]
    info = sf.info(download)
    assert info.samplerate == 24000 and info.frames == sum(len(s) for _, s in audio)
    chats, _, _ = collect(app["reply_to_text"]("Hi", "Reader", True, session("tts")))
    assert chats
    with pytest.raises(gr.Error, match="at least 3 s"):
        app["create_voice"]((16000, np.full(8000, 3000, np.int16)), "Chelsie", "Short", False, session("tts"))
    with pytest.raises(gr.Error, match="Type the text"):
        list(app["read"]("  ", "Reader", session("tts")))
    compare = list(app["read_with_stock"]("Compare this.", "Reader", session("tts")))
    assert any(isinstance(a, tuple) for a, _, _ in compare)


def test_inside_tab_explains_the_sessions_last_turn(app, media_dir):
    with pytest.raises(gr.Error, match="No turn yet"):
        app["explain_last"](session("inside"))
    collect(app["reply_to_text"]("Explain me", "Chelsie", True, session("inside")))
    summary, tokens, rope, audio, vision, dit, timeline = app["explain_last"](session("inside"))
    assert "This turn:" in summary
    assert all(p is not None and p.ndim == 3 for p in (tokens, rope, dit, timeline))
    assert audio is None and vision is None  # a typed turn has no audio or picture
    outputs = app["explain_new"]("What is this?", None, None, str(media_dir / "talking.mp4"), session("inside2"))
    assert all(p is not None for p in outputs[1:])


def test_clear_during_a_reply_keeps_the_history_cleared(app):
    reply = app["reply_to_text"]("Long answer please", "Chelsie", True, session("clear"))
    next(reply)
    next(reply)
    app["on_clear"](session("clear"))
    list(reply)  # the reply runs out after the clear
    again, _, _ = collect(app["reply_to_text"]("Fresh start", "Chelsie", False, session("clear")))
    assert [m["content"] for m in again[-1] if m["role"] == "user"] == ["Fresh start"]


def test_stop_drops_spoken_turns_still_waiting(app, tmp_path):
    for chunk in speech_chunks(tmp_path, "Are you there?"):
        app["on_mic"](chunk, session("stopq"))
    app["on_stop"](session("stopq"))
    assert list(app["reply_to_turn"]("Chelsie", True, session("stopq"))) == []


def test_speaking_while_a_finished_reply_plays_pauses_it(app, tmp_path):
    collect(app["reply_to_text"]("Say something", "Chelsie", True, session("late")))
    barges = [app["on_mic"](c, session("late"))[1] for c in speech_chunks(tmp_path, "Wait a moment.")]
    assert any(not isinstance(b, dict) for b in barges)


def test_long_speech_is_cut_into_turns_without_losing_the_rest(tmp_path):
    from omni_app.vad import TurnDetector, TurnEnded, VadOptions

    detector = TurnDetector(VadOptions(max_turn_seconds=1.0))
    ended = []
    for chunk in speech_chunks(tmp_path, "This is a rather long sentence that goes on for quite a while."):
        ended += [e for e in detector.feed(*chunk) if isinstance(e, TurnEnded)]
    assert len(ended) >= 3
    assert sum(e.seconds for e in ended) > 2.5
