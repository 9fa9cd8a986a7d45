"""OpenAI JSON in, our Request out: what a client may ask, and the messages it gets when it can't."""

from __future__ import annotations

import base64

import pytest

from omni_app.config import GenerationLimits, MediaLimits
from omni_app.conversation import SPEECH_SYSTEM_PROMPT, ImagePart, TextPart
from omni_app.serve.parts import WireError
from omni_app.serve.wire import parse_chat, parse_speech

CAPS = GenerationLimits(max_new_tokens=100, max_speech_seconds=10)


def chat(body: dict, **kwargs):
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return parse_chat(body, CAPS, MediaLimits(), "Chelsie", **kwargs)


def refused(body: dict, **kwargs) -> WireError:
    with pytest.raises(WireError) as error:
        chat(body, **kwargs)
    return error.value


def test_text_only_by_default_and_speech_when_asked():
    plain = chat({})
    assert plain.audio_format is None and plain.request.voice is None and not plain.stream
    spoken = chat({"modalities": ["text", "audio"], "stream": True})
    assert spoken.audio_format == "pcm16" and spoken.request.voice == "Chelsie"
    whole = chat({"modalities": ["text", "audio"], "audio": {"voice": {"id": "Mine#abc"}}})
    assert whole.audio_format == "wav" and whole.request.voice == "Mine#abc"


def test_lengths_are_the_clients_within_the_servers():
    assert chat({"max_tokens": 8}).request.limits.max_new_tokens == 8
    capped = chat({"max_completion_tokens": 10_000, "max_speech_seconds": 99}).request.limits
    assert (capped.max_new_tokens, capped.max_speech_seconds) == (100, 10)


def test_the_conversation_keeps_roles_system_prompt_and_earlier_spoken_replies():
    call = chat({"user": "alice", "seed": 4, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "assistant", "audio": {"id": "audio_1"}},
        {"role": "user", "content": "More"}]}, transcript={"audio_1": "Hi there"}.get)
    conversation = call.request.conversation
    assert conversation.system_prompt == "Be brief." and [t.role for t in conversation.turns] == [
        "user", "assistant", "user"]
    assert conversation.turns[1].text == "Hi there"
    assert call.request.session == "alice" and call.request.seed == 4
    assert chat({}).request.conversation.system_prompt == SPEECH_SYSTEM_PROMPT


def test_an_image_data_url_is_decoded(media_dir):
    url = "data:image/jpeg;base64," + base64.b64encode((media_dir / "photo.jpg").read_bytes()).decode()
    call = chat({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                           {"type": "text", "text": "What is it?"}]}]})
    parts = call.request.conversation.turns[0].parts
    assert isinstance(parts[0], ImagePart) and parts[0].image.size == (480, 320) and isinstance(parts[1], TextPart)


@pytest.mark.parametrize("body, param, words", [
    ({"seed": -1}, "seed", "seed must be an integer"),
    ({"modalities": ["video"]}, "modalities", "modalities must be"),
    ({"audio": {"format": "mp3"}, "modalities": ["text", "audio"]}, "audio.format", "use pcm16 or wav"),
    ({"tools": [{"type": "function"}]}, "tools", "not supported"),
    ({"n": 2}, "n", "n must be 1"),
    ({"max_tokens": 0}, "max_tokens", "positive integer"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}, "messages",
     "last message must be the user's"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}, "messages[0].content[0].type",
     "not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]},
     "messages[0].content[0].image_url.url", "must be base64-encoded"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "**"}}]}]},
     "messages[0].content[0].input_audio.data", "not valid base64"),
    ({"messages": [{"role": "assistant", "audio": {"id": "gone"}}, {"role": "user", "content": "Hi"}]},
     "messages[0].audio.id", "is unknown here"),
])
def test_what_cant_be_done_is_named(body, param, words):
    error = refused(body)
    assert error.param == param and words in str(error)


def test_speech_requests():
    call = parse_speech({"input": "Read me.", "voice": "Ethan", "response_format": "pcm", "stream_format": "sse"},
                        CAPS, "Chelsie")
    assert call.request.speak_text == "Read me." and call.request.voice == "Ethan" and call.sse
    assert parse_speech({"input": "Hi"}, CAPS, "Chelsie").audio_format == "wav"
    for body, words in [({"input": " "}, "input must be"), ({"input": "Hi", "speed": 2}, "speed can't be changed"),
                        ({"input": "Hi", "response_format": "mp3"}, "use wav or pcm")]:
        with pytest.raises(WireError, match=words):
            parse_speech(body, CAPS, "Chelsie")
