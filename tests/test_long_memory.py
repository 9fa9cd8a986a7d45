"""Memory stays bounded: video decoding keeps only sampled frames, sessions leave nothing behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import gradio as gr
import numpy as np
import pytest

from omni_app.config import GenerationLimits, MediaLimits
from omni_app.engine.local import LocalBackend
from omni_app.engine.service import ModelService
from omni_app.engine.streaming import StreamingEngine
from omni_app.media import smart_resize, video_frame_pixels
from omni_app.ui.app import build_app
from omni_app.ui.context import AppContext
from omni_app.ui.session import Sessions

LIMITS = GenerationLimits(max_new_tokens=4, max_speech_seconds=1.0)

# Peak resident memory of decoding, measured in a process of its own.
DECODE = textwrap.dedent("""
    import resource, sys
    from omni_app.media import load_video
    load_video(sys.argv[2])  # libraries and codecs warm, first allocations made
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clip = load_video(sys.argv[1])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(clip.frames.shape, clip.frames.nbytes, (after - before) * 1024)
""")


def test_decoding_a_long_high_resolution_video_keeps_only_the_sampled_frames(tmp_path, media_dir):
    video = tmp_path / "long.mp4"
    seconds, rate, size = 12, 25, (1280, 720)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size[0]}x{size[1]}:rate={rate}", "-t", str(seconds), "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(video)], check=True)
    out = subprocess.run([sys.executable, "-c", DECODE, str(video), str(media_dir / "mute.mp4")],
                         check=True, capture_output=True, text=True).stdout.split()
    sampled, grown = int(out[-2]), int(out[-1])
    decoded = seconds * rate * size[0] * size[1] * 3  # every frame at its own resolution: ~830 MB
    h, w = smart_resize(size[1], size[0], MediaLimits().video_min_pixels, video_frame_pixels(24, MediaLimits()))
    assert sampled == 2 * seconds * h * w * 3
    # The sampled frames plus a few decoder frames, not every decoded frame.
    assert grown < 2 * sampled + 120 * 2**20, (grown / 2**20, sampled / 2**20)
    assert grown < decoded / 4


@pytest.fixture
def app(service):
    """The web app on a model service of its own (to count what it keeps)."""
    context = AppContext(LocalBackend(ModelService(service.loaded, StreamingEngine())), LIMITS)
    demo = build_app(context)
    return context, {f.name: f.fn for f in demo.fns.values() if f.fn is not None}


def test_fifty_sessions_opened_and_closed_leave_nothing_behind(app):
    context, fns = app
    service = context.backend.service
    for index in range(50):
        request = gr.Request(session_hash=f"visitor-{index}")
        list(fns["reply_to_text"](f"Hello {index}", "Chelsie", False, request))
        if index % 10 == 0:
            fns["on_frame"](np.zeros((480, 640, 3), np.uint8), request)
    assert len(context.sessions) == 50 and len(service.sessions) == 50 and service.sessions.nbytes > 0
    for index in range(50):
        fns["forget"](gr.Request(session_hash=f"visitor-{index}"))  # the browser tab unloads
    assert len(context.sessions) == 0
    assert len(service.sessions) == 0 and service.sessions.nbytes == 0


def test_clear_releases_the_conversations_cache(app):
    context, fns = app
    service = context.backend.service
    request = gr.Request(session_hash="clearing")
    list(fns["reply_to_text"]("Hello", "Chelsie", False, request))
    assert service.sessions.nbytes > 0
    fns["on_clear"](request)
    assert service.sessions.nbytes == 0 and len(service.sessions) == 0
    list(fns["reply_to_text"]("Again", "Chelsie", False, request))  # and the chat goes on
    assert service.sessions.nbytes > 0


def test_the_least_recently_used_sessions_go_and_release_their_chats():
    ended, left = [], []
    sessions = Sessions(limit=3, on_end=ended.append, on_leave=left.append)
    for name in "abcde":
        sessions.chat(gr.Request(session_hash=name), "voice")
    assert sessions.settle(10)  # evicted sessions are released off the request's thread
    assert len(sessions) == 3 and ended == ["voice:a", "voice:b"] and left == ["a", "b"]
    sessions.chat(gr.Request(session_hash="c"), "video")
    sessions.drop(gr.Request(session_hash="c"))
    assert sorted(ended[2:]) == ["video:c", "voice:c"] and left[2:] == ["c"] and len(sessions) == 2


def test_an_evicted_session_takes_its_speech_files_with_it(app):
    context, fns = app
    limit = context.sessions.limit
    try:
        first, second = gr.Request(session_hash="wav-first"), gr.Request(session_hash="wav-second")
        list(fns["reply_to_text"]("Say something", "Chelsie", True, first))
        kept = context.speech.files("wav-first")
        assert kept and all(path.is_file() for path in kept)
        context.sessions.limit = 1
        list(fns["reply_to_text"]("Say more", "Chelsie", True, second))  # the first one is evicted
        assert context.sessions.settle(10)
        assert context.speech.files("wav-first") == [] and not any(path.exists() for path in kept)
        assert context.speech.files("wav-second")
    finally:
        context.sessions.limit = limit


def test_the_webcam_buffer_keeps_frames_at_the_models_resolution(app):
    context, fns = app
    request = gr.Request(session_hash="camera")
    frame = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    for _ in range(3):
        preview = fns["on_frame"](frame, request)
    kept = [f for _, f in context.sessions.find(request).chats["video"].frames]
    budget = video_frame_pixels(4, context.media)
    assert len(kept) == 3 and all(f.shape == preview.shape for f in kept)
    assert kept[0].shape[0] * kept[0].shape[1] <= budget < 1080 * 1920
    context.drop_session(request)
