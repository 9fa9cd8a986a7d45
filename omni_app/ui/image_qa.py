"""Image Q&A tab: an image, a question typed or spoken, an answer in text and speech."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..conversation import AudioPart, Conversation, ImagePart
from ..errors import OmniError
from ..media import audio_from_array, load_image
from .reply import Backend, run_reply
from .session import SessionStore

ASSETS = Path(__file__).resolve().parents[2] / "assets"
EXAMPLES = [
    ("beach.jpg", "What is in this picture?"),
    ("street.jpg", "Describe the scene in one sentence."),
    ("chart.png", "What does this chart show?"),
]


def build(backend: Backend, gpu_queue: str) -> tuple[SessionStore, gr.Dropdown]:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events."""
    sessions = SessionStore()
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.Image(sources=["upload", "clipboard", "webcam"], type="pil", label="Image",
                             elem_id="image-input")
            question = gr.Textbox(label="Question", placeholder="Ask about the image", elem_id="image-question")
            spoken = gr.Audio(sources=["microphone", "upload"], type="numpy", label="Or ask by voice")
            with gr.Row():
                voice = gr.Dropdown(backend.voices, value=backend.voices[0], label="Voice")
                speak = gr.Checkbox(True, label="Speak the answer")
            ask = gr.Button("Ask", variant="primary", elem_id="image-ask")
            examples = [[str(ASSETS / name), q] for name, q in EXAMPLES if (ASSETS / name).is_file()]
            if examples:
                gr.Examples(examples, inputs=[image, question], label="Examples")
        with gr.Column(scale=3):
            chat = gr.Chatbot(label="Answers", height=420, elem_id="image-chat")
            status = gr.Markdown("", elem_id="image-status")
            reply_audio = gr.Audio(label="Spoken answer", streaming=True, autoplay=True, interactive=False,
                                   elem_id="image-reply")
            clear = gr.Button("New image / clear")

    def answer(picture, text, recorded, voice_name, speak_on, request: gr.Request):
        if picture is None:
            raise gr.Error("Add an image first: upload, paste or take one with the webcam.")
        has_text = bool(text and text.strip())
        if not has_text and recorded is None:
            raise gr.Error("Ask a question: type it or record it.")
        try:
            parts = [ImagePart(load_image(picture, backend.media))]
            if recorded is not None:
                parts.append(AudioPart(audio_from_array(recorded[1], recorded[0], backend.media)))
        except OmniError as exc:
            raise gr.Error(str(exc)) from exc
        if has_text:
            parts.append(text.strip())
        session = sessions.get(request)
        # Each question is about the image shown now: the conversation restarts with it.
        session.conversation = Conversation()
        shown = ("(image) " + text.strip()) if has_text else "(image, spoken question)"
        chosen = backend.resolve_voice(voice_name, request) if speak_on else None
        yield from run_reply(backend, session, parts, shown, chosen, request)

    def image_on_clear(request: gr.Request):
        sessions.get(request).clear()
        return [], None, "", None, "", None

    ask.click(answer, inputs=[image, question, spoken, voice, speak], outputs=[chat, reply_audio, status],
              concurrency_limit=1, concurrency_id=gpu_queue, api_name="image_qa")
    clear.click(image_on_clear, outputs=[chat, reply_audio, status, image, question, spoken], queue=False,
                api_visibility="private")
    return sessions, voice
