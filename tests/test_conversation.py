"""Conversations become the processor's inputs through the official chat template."""

from __future__ import annotations

import numpy as np
import pytest

from omni_app.conversation import (
    SPEECH_SYSTEM_PROMPT,
    AudioPart,
    Conversation,
    ImagePart,
    VideoPart,
)
from omni_app.errors import RequestError
from omni_app.media import load_audio, load_image, load_video
from omni_app.prompt import build_inputs


@pytest.fixture(scope="module")
def processor(service):
    return service.loaded.processor


def _count(inputs, token: str, processor) -> int:
    token_id = processor.tokenizer.convert_tokens_to_ids(token)
    return int((inputs.tensors["input_ids"][0] == token_id).sum())


def test_text_turn_uses_speech_system_prompt(processor):
    inputs = build_inputs(Conversation().add_user("Hello"), processor)
    text = processor.tokenizer.decode(inputs.tensors["input_ids"][0])
    assert text.startswith("<|im_start|>system\n" + SPEECH_SYSTEM_PROMPT + "<|im_end|>")
    assert text.endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    assert Conversation().speech_prompt_warning() is None
    assert "system prompt" in Conversation(system_prompt="You are a pirate.").speech_prompt_warning()


def test_history_goes_back_as_text(processor, media_dir):
    audio = AudioPart(load_audio(media_dir / "speech.wav"))
    conv = Conversation().add_user(audio, "first").add_assistant("an answer").add_user("second")
    inputs = build_inputs(conv, processor)
    text = processor.tokenizer.decode(inputs.tensors["input_ids"][0])
    assert "<|im_start|>assistant\nan answer<|im_end|>" in text
    assert inputs.counts == {"audio": 1, "images": 0, "videos": 0}
    # ~40 ms per audio token after the encoder's 2x pooling.
    assert 50 < _count(inputs, "<|AUDIO|>", processor) < 150


def test_image_and_video_placeholders(processor, media_dir):
    conv = Conversation().add_user(ImagePart(load_image(media_dir / "photo.jpg")),
                                   VideoPart(load_video(media_dir / "mute.mp4")), "What changed?")
    inputs = build_inputs(conv, processor)
    grid = inputs.tensors["image_grid_thw"][0].tolist()
    assert _count(inputs, "<|IMAGE|>", processor) == grid[0] * grid[1] * grid[2] // 4
    vgrid = inputs.tensors["video_grid_thw"][0].tolist()
    assert vgrid[0] == 2  # 4 frames at 2 fps, temporal patch 2
    assert _count(inputs, "<|VIDEO|>", processor) == vgrid[0] * vgrid[1] * vgrid[2] // 4
    assert not inputs.use_audio_in_video


def test_video_with_audio_interleaves(processor, media_dir):
    conv = Conversation().add_user(VideoPart(load_video(media_dir / "talking.mp4")), "What is said?")
    inputs = build_inputs(conv, processor)
    assert inputs.use_audio_in_video
    assert inputs.tensors["video_second_per_grid"][0].item() == pytest.approx(1.0)
    ids = inputs.tensors["input_ids"][0].tolist()
    v = processor.tokenizer.convert_tokens_to_ids("<|VIDEO|>")
    a = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    kinds = [("v" if i == v else "a") for i in ids if i in (v, a)]
    runs = "".join(k for j, k in enumerate(kinds) if j == 0 or kinds[j - 1] != k)
    # 3 s of video+audio in 2 s chunks: video, audio, video, audio.
    assert runs == "vava"


def test_mixed_videos_get_a_silent_track(processor, media_dir):
    conv = Conversation().add_user(VideoPart(load_video(media_dir / "talking.mp4")),
                                   VideoPart(load_video(media_dir / "mute.mp4")), "Compare")
    inputs = build_inputs(conv, processor)
    assert inputs.use_audio_in_video and inputs.counts["audio"] == 2


def test_empty_messages_are_rejected():
    with pytest.raises(RequestError, match="empty"):
        Conversation().add_user("   ")
    with pytest.raises(RequestError, match="user turn"):
        build_inputs(Conversation(), None)
    assert AudioPart(np.zeros(16000, np.float32)).seconds == 1.0
    assert AudioPart(np.zeros(8000, np.float32)).seconds == 0.5
