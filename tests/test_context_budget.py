"""Past the model's context a conversation keeps answering: oldest media, then oldest turns, are left out."""

from __future__ import annotations

import warnings

import gradio as gr
import pytest
import soundfile as sf

from omni_app.api import Request
from omni_app.config import GenerationLimits
from omni_app.conversation import AudioPart, Conversation, VideoPart
from omni_app.engine.local import LocalBackend
from omni_app.engine.service import ModelService
from omni_app.engine.streaming import StreamingEngine
from omni_app.errors import RequestError
from omni_app.events import Done, Notice, TextDelta
from omni_app.media import load_video
from omni_app.prompt import build_inputs
from omni_app.ui.app import build_app
from omni_app.ui.context import AppContext

LIMITS = GenerationLimits(max_new_tokens=8, max_speech_seconds=1.0)


def small_service(service, context: int) -> ModelService:
    return ModelService(service.loaded, StreamingEngine(), context_tokens=context)


def turn(service, conversation, session="long"):
    events = list(service.stream(Request(conversation, voice=None, limits=LIMITS, seed=1, session=session)))
    assert isinstance(events[-1], Done) and events[-1].reason in ("finished", "length")
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    notices = [e.message for e in events if isinstance(e, Notice)]
    prompt = service.loaded.processor.tokenizer.decode(list(events[-1].trace.prompt_ids))
    return text, notices, prompt, events[-1]


def test_oldest_videos_go_first_and_the_user_is_told_once(service, media_dir):
    clip = load_video(media_dir / "mute.mp4")
    context = 1100  # about three of these clips
    small = small_service(service, context)
    video_token = service.loaded.processor.video_token
    span = build_inputs(Conversation().add_user(VideoPart(clip)), service.loaded.processor).media[0]
    per_clip = span.end - span.start
    conversation, noticed, markers = Conversation(), [], []
    # Six clips, then two short questions that fit beside what is already left out.
    for index, parts in enumerate([[VideoPart(clip), f"Clip {i}: what now?"] for i in range(6)] + [["And?"]] * 2):
        conversation = conversation.add_user(*parts)
        text, notices, prompt, done = turn(small, conversation)
        assert len(done.trace.prompt_ids) + LIMITS.max_new_tokens <= context
        assert len(notices) <= 1
        noticed.append(bool(notices))
        markers.append(prompt.count("[earlier video, 2 s]"))
        clips = min(index + 1, 6)
        # Media go before turns: every clip's question is still there; the clips kept are whole.
        assert all(f"Clip {i}: what now?" in prompt for i in range(clips))
        assert prompt.count(video_token) == (clips - markers[-1]) * per_clip
        if markers[-1]:  # the oldest clips are the ones replaced
            assert prompt.rindex("[earlier video") < prompt.index(video_token)
        if notices:
            assert "video" in notices[0] and "Clear" in notices[0]
        conversation = conversation.add_assistant(text)
    assert markers[0] == 0 and 0 < markers[3] < 3  # some, not all, of the three older clips
    assert markers == sorted(markers)  # once left out, a clip stays out
    # Told when more was left out, not at every turn.
    assert noticed == [a < b for a, b in zip([0] + markers, markers, strict=False)]
    assert noticed[-2:] == [False, False]
    small.end_session("long")


def test_oldest_turns_go_when_no_media_is_left(service):
    small = small_service(service, 400)
    conversation, told = Conversation(), []
    for index in range(8):
        conversation = conversation.add_user(f"Question number {index}, with a few more words to make it longer.")
        text, notices, prompt, done = turn(small, conversation, "text")
        assert len(done.trace.prompt_ids) + LIMITS.max_new_tokens <= 400
        assert f"Question number {index}," in prompt
        told += notices
        conversation = conversation.add_assistant(text or "ok")
    assert "Question number 0," not in prompt  # the oldest turns are gone
    assert prompt.startswith("<|im_start|>system\n" + conversation.system_prompt)
    assert told and all("oldest turns" in n for n in told) and len(told) < 8


def test_a_turn_too_large_on_its_own_is_refused(service, media_dir):
    small = small_service(service, 200)
    conversation = Conversation().add_user(VideoPart(load_video(media_dir / "mute.mp4")), "What happens?")
    with pytest.raises(RequestError, match="too long for the model.*shorter recording or video"):
        list(small.stream(Request(conversation, voice=None, limits=LIMITS, session="big")))
    # The same session goes on with a message that fits.
    assert turn(small, Conversation().add_user("Hi"), "big")[3].reason in ("finished", "length")


def test_the_chat_keeps_every_turn_while_the_model_sees_fewer(service, media_dir):
    context = AppContext(LocalBackend(small_service(service, 420)), LIMITS)
    fns = {f.name: f.fn for f in build_app(context).fns.values() if f.fn is not None}
    data, rate = sf.read(str(media_dir / "speech.wav"), dtype="int16")
    request = gr.Request(session_hash="ctx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            outputs = list(fns["reply_to_recording"]((rate, data), "Chelsie", False, request))
    shown = outputs[-1][0]
    assert [m["content"] for m in shown if m["role"] == "user"] == [f"(spoken, {len(data) / rate:.1f} s)"] * 5
    told = [str(w.message) for w in caught if "no longer sees" in str(w.message)]
    assert told and "audio" in told[0]
    # The session's conversation still holds every recording; only the model's prompt left some out.
    conversation = context.sessions.find(request).chats["voice"].conversation
    assert sum(isinstance(p, AudioPart) for t in conversation.turns for p in t.parts) == 5
    context.drop_session(request)
