"""Voice chat tab: talk, pause, and hear the answer begin while its text still arrives."""

from __future__ import annotations

import gradio as gr

from ..config import INPUT_SAMPLE_RATE
from ..conversation import AudioPart
from ..errors import RequestError
from ..media import audio_from_array
from .context import AppContext
from .errors import shown
from .listen import PageListener, log_turn, page_turn
from .player import STAMP_JS, stop_js
from .reply import TurnEnd, run_reply
from .session import SessionStore
from .widgets import reply_controls, reply_view, turn_stamp


def build(app: AppContext, gpu_queue: str, live: PageListener) -> tuple[SessionStore, gr.Dropdown]:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events; turns heard by
    the page's ``live`` listener while the tab is shown are answered here."""
    sessions = app.sessions.tab("voice")
    with gr.Row():
        with gr.Column(scale=3):
            chat, status, speech, replay = reply_view("voice", app)
        with gr.Column(scale=2):
            turn = live.turns("voice", sessions)
            gr.Markdown("Press **Start listening** above once, then talk and pause.")
            with gr.Accordion("Push to talk", open=False):
                recording = gr.Audio(sources=["microphone", "upload"], type="numpy", label="Record, then send")
                send_recording = gr.Button("Send recording")
            with gr.Row(equal_height=True):
                text = gr.Textbox(label="Or type", placeholder="Type a message", elem_id="voice-text",
                                  scale=4)
                send = gr.Button("Send", elem_id="voice-send", scale=1, min_width=80)
            voice, speak, stop, clear = reply_controls("voice", app.backend.voices())
            stamp = turn_stamp()

    @shown
    def reply_to_turn(voice_name, speak_on, request: gr.Request, event: gr.EventData):
        heard = page_turn(event._data)
        log_turn(heard)
        chosen = app.resolve_voice(voice_name, request) if speak_on else None
        yield from run_reply(app, sessions.get(request), [AudioPart(heard.audio)], f"(spoken, {heard.seconds:.1f} s)",
                             chosen, request, TurnEnd.from_browser(heard.stamp))

    @shown
    def reply_to_text(message, voice_name, speak_on, request: gr.Request, sent_at=None):
        if not message or not message.strip():
            raise RequestError("Type a message first.")
        chosen = app.resolve_voice(voice_name, request) if speak_on else None
        yield from run_reply(app, sessions.get(request), [message], message, chosen, request,
                             TurnEnd.from_browser(sent_at))

    @shown
    def reply_to_recording(recorded, voice_name, speak_on, request: gr.Request, sent_at=None):
        if recorded is None:
            raise RequestError("Record something first (or upload an audio file).")
        audio = audio_from_array(recorded[1], recorded[0], app.media)
        chosen = app.resolve_voice(voice_name, request) if speak_on else None
        yield from run_reply(app, sessions.get(request), [AudioPart(audio)],
                             f"(spoken, {len(audio) / INPUT_SAMPLE_RATE:.1f} s)", chosen, request,
                             TurnEnd.from_browser(sent_at))

    @shown
    def on_stop(request: gr.Request):
        sessions.get(request).stop()

    @shown
    def on_clear(request: gr.Request):
        sessions.get(request).clear()
        return [], "", "", None

    outputs = [chat, speech, status, replay]
    common = dict(outputs=outputs, concurrency_limit=1, concurrency_id=gpu_queue, show_progress_on=[chat])
    by_voice = turn(reply_to_turn, inputs=[voice, speak], api_visibility="private", **common)
    # Enter or a tap on Send (not every phone keyboard has an Enter to press).
    typed = [text.submit, send.click]
    by_text = gr.on(typed, reply_to_text, inputs=[text, voice, speak, stamp], js=STAMP_JS, api_name="voice_chat_text",
                    **common)
    gr.on(typed, lambda: "", outputs=[text], queue=False, api_visibility="private")
    by_recording = send_recording.click(reply_to_recording, inputs=[recording, voice, speak, stamp], js=STAMP_JS,
                                        api_name="voice_chat_recording", **common)
    stop.click(on_stop, js=stop_js("voice"), queue=False, cancels=[by_voice, by_text, by_recording],
               api_visibility="private")
    clear.click(on_clear, js=stop_js("voice"), outputs=outputs, queue=False, cancels=[by_voice, by_text, by_recording],
                api_visibility="private")
    return sessions, voice
