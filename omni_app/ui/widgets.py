"""Pieces of layout the chat tabs share."""

from __future__ import annotations

import gradio as gr


def reply_view(prefix: str) -> tuple[gr.Chatbot, gr.Markdown, gr.Audio]:
    """The conversation, the status line under it and the streamed spoken reply."""
    chat = gr.Chatbot(label="Conversation", height=420, elem_id=f"{prefix}-chat")
    status = gr.Markdown("", elem_id=f"{prefix}-status")
    audio = gr.Audio(label="Spoken reply", streaming=True, autoplay=True, interactive=False,
                     elem_id=f"{prefix}-reply")
    return chat, status, audio


def reply_controls(voices: list[str]) -> tuple[gr.Dropdown, gr.Checkbox, gr.Button, gr.Button]:
    """Voice picker, speech on/off, Stop and Clear."""
    voice = gr.Dropdown(voices, value=voices[0], label="Voice")
    speak = gr.Checkbox(True, label="Speak the reply")
    with gr.Row():
        stop = gr.Button("Stop", variant="stop")
        clear = gr.Button("Clear")
    return voice, speak, stop, clear


def live_microphone(prefix: str) -> tuple[gr.Audio, gr.Number, gr.Number]:
    """A streaming microphone and the hidden counters its turns and barge-ins bump."""
    mic = gr.Audio(sources=["microphone"], streaming=True, label="Microphone: speak, then pause",
                   elem_id=f"{prefix}-mic")
    return mic, gr.Number(value=0, visible="hidden"), gr.Number(value=0, visible="hidden")
