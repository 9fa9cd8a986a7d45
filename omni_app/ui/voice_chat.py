"""Voice chat tab: talk, pause, and hear the answer begin while its text still arrives."""

from __future__ import annotations

import gradio as gr

from ..conversation import AudioPart
from ..errors import RequestError
from ..media import audio_from_array
from .context import AppContext
from .errors import shown
from .mic import PAUSE_AUDIO_JS, feed_microphone, take_turn
from .reply import run_reply
from .session import SessionStore
from .widgets import live_microphone, reply_controls, reply_view


def build(app: AppContext, gpu_queue: str) -> tuple[SessionStore, gr.Dropdown]:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events."""
    sessions = SessionStore("voice")
    with gr.Row():
        with gr.Column(scale=3):
            chat, status, reply_audio = reply_view("voice")
        with gr.Column(scale=2):
            mic, turn, barge = live_microphone("voice")
            with gr.Accordion("Push to talk", open=False):
                recording = gr.Audio(sources=["microphone", "upload"], type="numpy", label="Record, then send")
                send_recording = gr.Button("Send recording")
            text = gr.Textbox(label="Or type", placeholder="Type a message and press Enter", elem_id="voice-text")
            voice, speak, stop, clear = reply_controls(app.backend.voices())

    @shown
    def on_mic(chunk, request: gr.Request):
        return feed_microphone(sessions.get(request), chunk)

    @shown
    def reply_to_turn(voice_name, speak_on, request: gr.Request):
        session = sessions.get(request)
        audio, _ = take_turn(session)
        if audio is None:
            return
        seconds = len(audio) / 16000
        chosen = app.resolve_voice(voice_name, request) if speak_on else None
        yield from run_reply(app, session, [AudioPart(audio)], f"(spoken, {seconds:.1f} s)", chosen, request)

    @shown
    def reply_to_text(message, voice_name, speak_on, request: gr.Request):
        if not message or not message.strip():
            raise RequestError("Type a message first.")
        chosen = app.resolve_voice(voice_name, request) if speak_on else None
        yield from run_reply(app, sessions.get(request), [message], message, chosen, request)

    @shown
    def reply_to_recording(recorded, voice_name, speak_on, request: gr.Request):
        if recorded is None:
            raise RequestError("Record something first (or upload an audio file).")
        audio = audio_from_array(recorded[1], recorded[0], app.media)
        chosen = app.resolve_voice(voice_name, request) if speak_on else None
        yield from run_reply(app, sessions.get(request), [AudioPart(audio)],
                             f"(spoken, {len(audio) / 16000:.1f} s)", chosen, request)

    @shown
    def on_stop(request: gr.Request):
        sessions.get(request).stop()

    @shown
    def on_clear(request: gr.Request):
        sessions.get(request).clear()
        return [], None, ""

    outputs = [chat, reply_audio, status]
    common = dict(outputs=outputs, concurrency_limit=app.concurrency, concurrency_id=gpu_queue)
    mic.stream(on_mic, inputs=[mic], outputs=[turn, barge], stream_every=0.25, concurrency_limit=None,
               show_progress="hidden", api_visibility="private")
    barge.change(None, js=PAUSE_AUDIO_JS)
    by_voice = turn.change(reply_to_turn, inputs=[voice, speak], api_visibility="private", **common)
    by_text = text.submit(reply_to_text, inputs=[text, voice, speak], api_name="voice_chat_text", **common)
    text.submit(lambda: "", outputs=[text], queue=False, api_visibility="private")
    by_recording = send_recording.click(reply_to_recording, inputs=[recording, voice, speak],
                                        api_name="voice_chat_recording", **common)
    stop.click(on_stop, js=PAUSE_AUDIO_JS, queue=False, cancels=[by_voice, by_text, by_recording],
               api_visibility="private")
    clear.click(on_clear, outputs=outputs, queue=False, cancels=[by_voice, by_text, by_recording],
                api_visibility="private")
    return sessions, voice
