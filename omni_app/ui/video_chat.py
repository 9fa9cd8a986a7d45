"""Webcam video chat: the frames and the sound of each spoken turn go in as one video."""

from __future__ import annotations

import gradio as gr
import numpy as np

from ..conversation import AudioPart, VideoPart
from ..media import frames_to_clip, smart_resize, video_frame_pixels
from .context import AppContext
from .errors import shown
from .mic import PAUSE_AUDIO_JS, feed_microphone, take_turn
from .reply import run_reply
from .session import ChatSession, SessionStore
from .widgets import live_microphone, reply_controls, reply_view

#: Frames from slightly before the speech started belong to the turn too.
LEAD_SECONDS = 0.5


def build(app: AppContext, gpu_queue: str) -> tuple[SessionStore, gr.Dropdown]:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events."""
    sessions = SessionStore("video")
    with gr.Row():
        with gr.Column(scale=2):
            camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam",
                              elem_id="video-camera")
            mic, turn, barge = live_microphone("video")
            preview = gr.Image(label="What the model sees (2 frames per second, model resolution)",
                               interactive=False, elem_id="video-preview")
        with gr.Column(scale=3):
            chat, status, reply_audio = reply_view("video")
            voice, speak, stop, clear = reply_controls(app.backend.voices())

    @shown
    def on_frame(frame, request: gr.Request):
        if frame is None:
            return gr.skip()
        session = sessions.get(request)
        session.add_frame(frame)
        return model_view(frame, app)

    @shown
    def video_on_mic(chunk, request: gr.Request):
        return feed_microphone(sessions.get(request), chunk)

    @shown
    def video_reply_to_turn(voice_name, speak_on, request: gr.Request):
        session = sessions.get(request)
        audio, ended = take_turn(session)
        if audio is None:
            return
        seconds = len(audio) / 16000
        part = turn_part(session, audio, ended, app)
        if isinstance(part, AudioPart):
            gr.Warning("No webcam frames arrived during this turn: only the sound was sent.")
            shown = f"(spoken, {seconds:.1f} s)"
        else:
            shown = f"(video: {len(part.clip.frames)} frames at 2 fps, spoken {seconds:.1f} s)"
        chosen = app.resolve_voice(voice_name, request) if speak_on else None
        yield from run_reply(app, session, [part], shown, chosen, request)

    @shown
    def video_on_stop(request: gr.Request):
        sessions.get(request).stop()

    @shown
    def video_on_clear(request: gr.Request):
        sessions.get(request).clear()
        return [], None, ""

    outputs = [chat, reply_audio, status]
    camera.stream(on_frame, inputs=[camera], outputs=[preview], stream_every=0.5, concurrency_limit=None,
                  show_progress="hidden", api_visibility="private")
    mic.stream(video_on_mic, inputs=[mic], outputs=[turn, barge], stream_every=0.25, concurrency_limit=None,
               show_progress="hidden", api_visibility="private")
    barge.change(None, js=PAUSE_AUDIO_JS)
    by_voice = turn.change(video_reply_to_turn, inputs=[voice, speak], outputs=outputs,
                           concurrency_limit=app.concurrency, concurrency_id=gpu_queue, api_visibility="private")
    stop.click(video_on_stop, js=PAUSE_AUDIO_JS, queue=False, cancels=[by_voice], api_visibility="private")
    clear.click(video_on_clear, outputs=outputs, queue=False, cancels=[by_voice], api_visibility="private")
    return sessions, voice


def turn_part(session: ChatSession, audio: np.ndarray, ended: float, app: AppContext):
    """The turn as the model takes it: the frames during the speech, at 2 fps, with its sound.

    ``ended`` is when voice activity detection ended the turn (monotonic clock), so the
    frames are the ones seen while the user spoke even if the reply waited in the queue.
    """
    started = ended - len(audio) / 16000 - LEAD_SECONDS
    stamped = [(t, f) for t, f in list(session.frames) if started <= t <= ended]
    if not stamped:
        return AudioPart(audio)
    times = np.array([t for t, _ in stamped]) - stamped[0][0]
    clip = frames_to_clip([f for _, f in stamped], times, app.media, audio=audio)
    return VideoPart(clip)


def model_view(frame: np.ndarray, app: AppContext) -> np.ndarray:
    """The frame resized to the resolution the model will get it at."""
    from PIL import Image

    limits = app.media
    height, width = frame.shape[:2]
    h, w = smart_resize(height, width, limits.video_min_pixels, video_frame_pixels(4, limits))
    return np.asarray(Image.fromarray(frame).resize((w, h)))
