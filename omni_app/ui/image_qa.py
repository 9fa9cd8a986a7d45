"""Image Q&A tab: an image, a question typed or spoken, an answer in text and speech."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..conversation import AudioPart, ImagePart
from ..errors import RequestError
from ..media import audio_from_array, load_image
from .context import AppContext
from .errors import shown
from .player import STAMP_JS, replay_player, speech_player, stop_js
from .reply import TurnEnd, run_reply
from .session import SessionStore
from .widgets import turn_stamp

ASSETS = Path(__file__).resolve().parents[2] / "assets"
EXAMPLES = [
    ("beach.jpg", "What is in this picture?"),
    ("street.jpg", "Describe the scene in one sentence."),
    ("chart.png", "What does this chart show?"),
]


def build(app: AppContext, gpu_queue: str) -> tuple[SessionStore, gr.Dropdown]:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events."""
    sessions = app.sessions.tab("image")
    voices = app.backend.voices()
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.Image(sources=["upload", "clipboard", "webcam"], type="pil", label="Image",
                             elem_id="image-input")
            question = gr.Textbox(label="Question", placeholder="Ask about the image", elem_id="image-question")
            spoken = gr.Audio(sources=["microphone", "upload"], type="numpy", label="Or ask by voice")
            with gr.Row():
                voice = gr.Dropdown(voices, value=voices[0], label="Voice")
                speak = gr.Checkbox(True, label="Speak the answer")
            ask = gr.Button("Ask", variant="primary", elem_id="image-ask")
            stamp = turn_stamp()
            examples = [[str(ASSETS / name), q] for name, q in EXAMPLES if (ASSETS / name).is_file()]
            if examples:
                gr.Examples(examples, inputs=[image, question], label="Examples")
        with gr.Column(scale=3):
            chat = gr.Chatbot(label="Answers", height=420, elem_id="image-chat")
            status = gr.Markdown("", elem_id="image-status")
            speech = speech_player("image", app.speech)
            replay = replay_player("image-replay", "Replay or download the spoken answer")
            clear = gr.Button("New image / clear")

    @shown
    def answer(picture, text, recorded, voice_name, speak_on, request: gr.Request, sent_at=None):
        if picture is None:
            raise RequestError("Add an image first: upload, paste or take one with the webcam.")
        has_text = bool(text and text.strip())
        if not has_text and recorded is None:
            raise RequestError("Ask a question: type it or record it.")
        parts = [ImagePart(load_image(picture, app.media))]
        if recorded is not None:
            parts.append(AudioPart(audio_from_array(recorded[1], recorded[0], app.media)))
        if has_text:
            parts.append(text.strip())
        session = sessions.get(request)
        # Each question is about the image shown now: the conversation restarts with it.
        session.restart()
        shown = ("(image) " + text.strip()) if has_text else "(image, spoken question)"
        chosen = app.resolve_voice(voice_name, request) if speak_on else None
        yield from run_reply(app, session, parts, shown, chosen, request, TurnEnd.from_browser(sent_at))

    @shown
    def image_on_clear(request: gr.Request):
        sessions.get(request).clear()
        return [], "", "", None, None, "", None

    ask.click(answer, inputs=[image, question, spoken, voice, speak, stamp], js=STAMP_JS,
              outputs=[chat, speech, status, replay], concurrency_limit=1, concurrency_id=gpu_queue,
              show_progress_on=[chat], api_name="image_qa")
    clear.click(image_on_clear, js=stop_js("image"), outputs=[chat, speech, status, replay, image, question, spoken],
                queue=False, api_visibility="private")
    return sessions, voice
