"""Pieces of layout the chat tabs share."""

from __future__ import annotations

import gradio as gr

from .context import AppContext
from .player import replay_player, speech_player


def reply_view(prefix: str, app: AppContext) -> tuple[gr.Chatbot, gr.Markdown, gr.HTML, gr.Audio]:
    """The conversation, the status line, the live speech player and the reply's WAV."""
    chat = gr.Chatbot(label="Conversation", height=420, elem_id=f"{prefix}-chat")
    status = gr.Markdown("", elem_id=f"{prefix}-status")
    speech = speech_player(prefix, app.speech)
    replay = replay_player(f"{prefix}-replay")
    return chat, status, speech, replay


def reply_controls(prefix: str, voices: list[str]) -> tuple[gr.Dropdown, gr.Checkbox, gr.Button, gr.Button]:
    """Voice picker, speech on/off, Stop and Clear."""
    voice = gr.Dropdown(voices, value=voices[0], label="Voice")
    speak = gr.Checkbox(True, label="Speak the reply")
    with gr.Row():
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop")
        clear = gr.Button("Clear")
    return voice, speak, stop, clear


def turn_stamp() -> gr.Number:
    """A hidden input the browser fills with the moment the user sent a turn (see player.STAMP_JS)."""
    return gr.Number(value=0, visible="hidden")
