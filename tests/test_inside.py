"""The "inside the model" data equals what the model itself computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_app import inside
from omni_app import inside_plots as plots
from omni_app.api import Request
from omni_app.config import GenerationLimits
from omni_app.conversation import Conversation, ImagePart, VideoPart
from omni_app.engine import inspect
from omni_app.media import load_image, load_video
from omni_app.prompt import build_inputs


@pytest.fixture(scope="module")
def talking_video(service, media_dir):
    clip = load_video(media_dir / "talking.mp4")
    conversation = Conversation().add_user(VideoPart(clip), "What is said?")
    return clip, conversation, build_inputs(conversation, service.loaded.processor)


def test_tmrope_equals_get_rope_index_and_chunks_every_2_seconds(service, talking_video):
    _, _, prepared = talking_video
    loaded = service.loaded
    positions, per_second = inspect.rope_positions(loaded, prepared)
    t = prepared.tensors
    reference, _ = loaded.model.thinker.get_rope_index(
        t["input_ids"], t.get("image_grid_thw"), t.get("video_grid_thw"), torch.ones_like(t["input_ids"]),
        True, t["feature_attention_mask"].sum(-1), t["video_second_per_grid"])
    assert np.array_equal(positions, reference[:, 0].numpy())
    assert per_second == loaded.model.config.thinker_config.position_id_per_seconds == 25
    tokens = inspect.token_map(loaded, prepared)
    media = [r for r in tokens.runs if r[0] in ("audio", "video")]
    assert [k for k, _, _ in media] == ["video", "audio", "video", "audio"]  # frames first in each chunk
    # Interleave boundaries every 2 s of media time: each chunk's time ids span < 2 s * 25.
    for _, start, length in media:
        span = positions[0, start:start + length]
        assert span.max() - span.min() < 2 * per_second
    starts = [positions[0, start] for kind, start, _ in media if kind == "video"]
    assert np.diff(starts).tolist() == [2 * per_second]
    # Text after the media continues after the largest id so far.
    last = media[-1][1] + media[-1][2]
    assert positions[0, last] == positions[:, :last].max() + 1


def test_drawn_attention_equals_the_dit_mask(service):
    loaded = service.loaded
    codes = 120
    drawn = inspect.dit_attention(loaded, codes)
    dit = loaded.model.token2wav.code2wav_dit_model
    hidden = torch.zeros(1, codes * dit.repeats, 1)
    block_diff = dit._create_block_diff(hidden)[0, 0]
    frames, block = drawn["frames"], drawn["block"]
    for layer, mask in zip(dit.transformer_blocks, drawn["layers"], strict=True):
        model_mask = (block_diff >= -float(layer.look_backward_block)) & (block_diff <= float(layer.look_ahead_block))
        assert np.array_equal(inside.frame_mask(mask, frames, block), model_mask.numpy())
    # Through all layers a frame sees 2 blocks back and 1 block ahead.
    row = inside.frame_mask(drawn["field"], frames, block)[5 * block]
    assert row[3 * block] and not row[3 * block - 1] and row[7 * block - 1] and not row[7 * block]


def test_timeline_counts_equal_done_stats(service):
    events = list(service.stream(Request(Conversation().add_user("Time me"), seed=1,
                                         limits=GenerationLimits(max_new_tokens=40, max_speech_seconds=2))))
    trace = events[-1].trace
    stats = events[-1].stats
    data = inside.timeline(list(trace.timeline), list(trace.chunks))
    assert data["token"][-1][1] == stats.text_tokens
    assert data["code"][-1][1] == stats.codec_codes
    assert len(data["chunk"]) == len(trace.chunks)
    assert sum(end - start for start, end in inside.chunk_audio(list(trace.chunks))) / 100 == stats.audio_seconds
    assert data["first_audio"] <= stats.time_to_first_audio
    image = plots.draw_timeline(data, stats.audio_seconds)
    assert image.ndim == 3 and image.shape[2] == 3


def test_audio_and_vision_views(service, talking_video, media_dir):
    clip, _, prepared = talking_video
    loaded = service.loaded
    audio = inspect.audio_view(loaded, prepared)
    assert audio.mel.shape[0] == 128 and abs(audio.seconds - 3.0) < 0.1 and audio.block_frames == 200
    assert 24 <= audio.tokens / audio.seconds <= 26
    video = inspect.vision_view(loaded, prepared, clip.frames[0], "video")
    t, h, w = prepared.tensors["video_grid_thw"][0].tolist()
    assert video.image.shape[:2] == (h * 14, w * 14) and video.tokens_per_frame == h * w // 4
    assert video.frame_times == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    image = load_image(media_dir / "photo.jpg")
    picture = build_inputs(Conversation().add_user(ImagePart(image), "?"), loaded.processor)
    view = inspect.vision_view(loaded, picture, np.asarray(image), "image")
    assert view.image.shape[0] % 28 == 0 and view.image.shape[1] % 28 == 0
    for drawing in (plots.draw_audio(audio), plots.draw_vision(video), plots.draw_vision(view)):
        assert drawing.ndim == 3
