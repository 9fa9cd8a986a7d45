"""Tab callbacks called directly, as gradio calls them, with real media and the tiny model."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
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


def page_turn_data(tmp_path, text: str, ended_ago: float = 0.0, **extra) -> dict:
    """A turn as the page's listener sends it: espeak-ng speech as 16 kHz int16 PCM, base64."""
    wav = tmp_path / "turn.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
    raw = tmp_path / "turn16.wav"
    subprocess.run(["sox", str(wav), "-r", "16000", "-c", "1", "-b", "16", str(raw), "pad", "0.3", "0.2"], check=True)
    data, rate = sf.read(str(raw), dtype="int16")
    now = time.time()
    turn = {"pcm": base64.b64encode(data.astype("<i2").tobytes()).decode(), "sample_rate": rate,
            "began": now - ended_ago - len(data) / rate, "ended": now - ended_ago, "sent": now}
    return {**turn, **extra}


def turn_event(data) -> gr.EventData:
    return gr.EventData(None, data)


def test_voice_turn_from_the_page(app, tmp_path):
    data = page_turn_data(tmp_path, "What is the weather like today?")
    chats, audio, _ = collect(app["reply_to_turn"]("Chelsie", True, session("vad"), turn_event(data)))
    assert chats[-1][0]["content"].startswith("(spoken, 2.")
    assert audio


@pytest.mark.parametrize("change, message", [
    ({"pcm": None}, "without its audio"),
    ({"pcm": "not base64!"}, "could not be read"),
    ({"pcm": "AA=="}, "could not be read"),  # one byte: not a whole sample
    ({"sample_rate": 48000}, "at 48000 Hz instead of 16000 Hz"),
    ({"pcm": "A" * 3_000_000}, "longer than 61 s"),
])
def test_a_malformed_turn_gets_a_message_and_the_chat_goes_on(app, tmp_path, change, message):
    data = {**page_turn_data(tmp_path, "Hello"), **change}
    with pytest.raises(gr.Error, match=message):
        collect(app["reply_to_turn"]("Chelsie", False, session(f"bad-{sorted(change.items())}"), turn_event(data)))
    chats, _, _ = collect(app["reply_to_turn"]("Chelsie", False, session(f"bad-{sorted(change.items())}"),
                                               turn_event(page_turn_data(tmp_path, "Hello"))))
    assert [m["role"] for m in chats[-1]] == ["user", "assistant"]


def test_barge_in_from_the_page_stops_the_reply_being_made(service, tmp_path):
    # Long limits: without barge-in this reply would run for a minute of speech.
    long_context = AppContext(LocalBackend(service), GenerationLimits(max_new_tokens=2000, max_speech_seconds=60),
                              MediaLimits())
    handlers = {f.name: f.fn for f in build_app(long_context).fns.values() if f.fn is not None}
    reply = handlers["reply_to_turn"]("Chelsie", True, session("barge"),
                                      turn_event(page_turn_data(tmp_path, "Tell me a story please.")))
    assert any('"seq"' in out[1] for out in reply), "the reply never spoke"  # stops at the first audio
    handlers["barge"](session("other"), turn_event({"tab": "voice"}))  # another page's barge-in ...
    handlers["barge"](session("barge"), turn_event({"tab": "video"}))  # ... or another tab's: no effect
    assert '"seq"' in next(reply)[1]
    handlers["barge"](session("barge"), turn_event({"tab": "voice"}))
    rest = list(reply)
    status = [s for _, _, s, _ in rest if isinstance(s, str)][-1]
    assert "stopped" in status
    seconds = float(status.split(" s of speech")[0].rsplit("· ", 1)[-1])
    assert seconds < 30  # cut off well before the 60 s the reply was allowed
    long_context.speech.close()


def test_video_turn_takes_the_webcam_frames_of_its_span(app, tmp_path, media_dir):
    from omni_app.media import load_video

    clip = load_video(media_dir / "mute.mp4")
    preview = app["on_frame"](clip.frames[0], session("cam"))
    assert preview.shape[0] % 28 == 0 and preview.shape[1] % 28 == 0
    for frame in clip.frames[:4]:
        app["on_frame"](frame, session("cam"))
    chats, audio, _ = collect(app["video_reply_to_turn"]("Chelsie", True, session("cam"),
                                                         turn_event(page_turn_data(tmp_path, "What do you see?"))))
    assert chats[-1][0]["content"].startswith("(video: 4 frames")  # 5 frames at once: 2 fps keeps 4
    assert audio
    # A turn spoken 30 s ago, before these frames: only its sound goes in.
    old = page_turn_data(tmp_path, "And now?", ended_ago=30.0)
    chats, _, _ = collect(app["video_reply_to_turn"]("Chelsie", False, session("cam"), turn_event(old)))
    assert chats[-1][-2]["content"].startswith("(spoken")


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


def speech_chunks(tmp_path, text: str, pause_s: float = 1.5):
    """espeak-ng speech at 48 kHz int16 followed by silence, cut in 0.25 s chunks as a stream comes."""
    wav = tmp_path / "turn.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
    raw = tmp_path / "turn48.wav"
    subprocess.run(["sox", str(wav), "-r", "48000", "-c", "1", "-b", "16", str(raw), "pad", "0.3", str(pause_s)],
                   check=True)
    data, rate = sf.read(str(raw), dtype="int16")
    step = rate // 4
    return [(rate, data[i:i + step]) for i in range(0, len(data), step)]


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
    data = page_turn_data(tmp_path, "How are you today?", ended_ago=1.5)
    outputs = list(app["reply_to_turn"]("Chelsie", False, session("ago"), turn_event(data)))
    head = json.loads(outputs[0][1].split("\n")[0])
    assert head["speak"] is False and head["turn"] == {"at": data["ended"]}  # on the page's own clock
    waited = float(re.search(r"waited ([0-9.]+) s for the model", outputs[-1][2]).group(1))
    assert 1.5 <= waited < 60  # counted from the end of the speech, not from its arrival

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


def test_clear_stop_and_new_turns_from_several_threads_leave_a_whole_chat(app):
    # The reply's thread and the person's Clear, Stop and next turn all write one chat.
    import random
    import threading

    errors: list[BaseException] = []
    request = session("hammer")

    def guarded(work):
        def run():
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - every failure is the finding
                errors.append(exc)
        return threading.Thread(target=run)

    def talk(name):
        for k in range(6):
            for _ in app["reply_to_text"](f"{name} {k}", "Chelsie", False, request):
                time.sleep(random.uniform(0, 0.01))

    def press(handler, times):
        for _ in range(times):
            time.sleep(random.uniform(0, 0.05))
            handler(request)

    threads = [guarded(lambda: talk("first")), guarded(lambda: talk("second")),
               guarded(lambda: press(app["on_clear"], 40)), guarded(lambda: press(app["on_stop"], 40))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert errors == []
    chats, _, _ = collect(app["reply_to_text"]("Last", "Chelsie", False, request))
    roles = [m["role"] for m in chats[-1]]
    assert roles == ["user", "assistant"] * (len(roles) // 2) and chats[-1][-2]["content"] == "Last"


def test_the_first_event_finds_nothing_left_to_import():
    # Gradio switches matplotlib's backend around every event; done cold, that import held
    # the server's event loop (and the first spoken turn) for up to a second.
    code = """
import sys
from gradio.utils import MatplotlibBackendMananger
from omni_app.ui.launch import prepare_first_event
prepare_first_event()
before = set(sys.modules)
with MatplotlibBackendMananger():
    pass
print(sorted(set(sys.modules) - before))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout[:500]
