"""Webcam video chat: the frames and the sound of each spoken turn go in as one video."""

from __future__ import annotations

import gradio as gr
import numpy as np

from ..conversation import AudioPart, VideoPart
from ..media import frames_to_clip, smart_resize, video_frame_pixels
from .call import END_CALL_JS, START_CALL_JS
from .context import AppContext
from .errors import shown
from .listen import PageListener, PageTurn, log_turn, page_turn
from .player import stop_js
from .reply import TurnEnd, run_reply
from .session import ChatSession, SessionStore
from .widgets import reply_controls, reply_view

#: Frames from slightly before the speech started belong to the turn too.
LEAD_SECONDS = 0.5


def build(app: AppContext, gpu_queue: str, live: PageListener) -> tuple[SessionStore, gr.Dropdown]:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events; turns heard by
    the page's ``live`` listener while the tab is shown are answered here."""
    sessions = app.sessions.tab("video")
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                start_call = gr.Button("Start call", variant="primary", elem_id="video-start-call")
                end_call = gr.Button("End call", variant="stop", elem_id="video-end-call")
            camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam",
                              elem_id="video-camera")
            turn = live.turns("video", sessions)
            preview = gr.Image(label="What the model sees (2 frames per second, model resolution)",
                               interactive=False, elem_id="video-preview")
        with gr.Column(scale=3):
            chat, status, speech, replay = reply_view("video", app)
            voice, speak, stop, clear = reply_controls("video", app.backend.voices())

    @shown
    def on_frame(frame, request: gr.Request):
        if frame is None:
            return gr.skip()
        # Kept at the model's resolution: a minute of raw 1080p frames would be ~750 MB.
        view = model_view(frame, app)
        sessions.get(request).add_frame(view)
        return view

    @shown
    def video_reply_to_turn(voice_name, speak_on, request: gr.Request, event: gr.EventData):
        heard = page_turn(event._data)
        log_turn(heard)
        session = sessions.get(request)
        seconds = heard.seconds
        part = turn_part(session, heard, app)
        if isinstance(part, AudioPart):
            gr.Warning("No webcam frames arrived during this turn: only the sound was sent.")
            shown = f"(spoken, {seconds:.1f} s)"
        else:
            shown = f"(video: {len(part.clip.frames)} frames at 2 fps, spoken {seconds:.1f} s)"
        chosen = app.resolve_voice(voice_name, request) if speak_on else None
        yield from run_reply(app, session, [part], shown, chosen, request, TurnEnd.from_browser(heard.stamp))

    @shown
    def video_on_stop(request: gr.Request):
        sessions.get(request).stop()

    @shown
    def video_on_end_call(request: gr.Request):
        session = sessions.get(request)
        session.stop()
        session.frames.clear()  # the camera is off: its frames (up to ~200 MB) go now

    @shown
    def video_on_clear(request: gr.Request):
        sessions.get(request).clear()
        return [], "", "", None

    outputs = [chat, speech, status, replay]
    camera.stream(on_frame, inputs=[camera], outputs=[preview], stream_every=0.5, concurrency_limit=None,
                  show_progress="hidden", api_visibility="private")
    by_voice = turn(video_reply_to_turn, inputs=[voice, speak], outputs=outputs, concurrency_limit=1,
                           concurrency_id=gpu_queue, show_progress_on=[chat], api_visibility="private")
    start_call.click(None, js=START_CALL_JS)
    stop.click(video_on_stop, js=stop_js("video"), queue=False, cancels=[by_voice], api_visibility="private")
    # Ending the call also stops the reply, as Stop does.
    end_call.click(video_on_end_call, js=END_CALL_JS, queue=False, cancels=[by_voice], api_visibility="private")
    clear.click(video_on_clear, js=stop_js("video"), outputs=outputs, queue=False, cancels=[by_voice],
                api_visibility="private")
    return sessions, voice


def turn_part(session: ChatSession, heard: PageTurn, app: AppContext):
    """The turn as the model takes it: the frames during the speech, at 2 fps, with its sound.

    The page says when the speech began and ended, so the frames are the ones seen while the
    person spoke even if the reply waited in the queue.
    """
    started = heard.began - LEAD_SECONDS
    stamped = [(t, f) for t, f in list(session.frames) if started <= t <= heard.ended]
    if not stamped:
        return AudioPart(heard.audio)
    times = np.array([t for t, _ in stamped]) - stamped[0][0]
    clip = frames_to_clip([f for _, f in stamped], times, app.media, audio=heard.audio)
    return VideoPart(clip)


def model_view(frame: np.ndarray, app: AppContext) -> np.ndarray:
    """The frame resized to the resolution the model will get it at."""
    from PIL import Image

    limits = app.media
    height, width = frame.shape[:2]
    h, w = smart_resize(height, width, limits.video_min_pixels, video_frame_pixels(4, limits))
    return np.asarray(Image.fromarray(frame).resize((w, h)))
