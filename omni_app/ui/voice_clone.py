"""Voice-cloning text-to-speech tab: exact text, read in a voice taken from a recording."""

from __future__ import annotations

import logging

import gradio as gr

from ..api import Request
from ..errors import RequestError
from ..events import AudioChunk, Done, Notice
from ..media import audio_from_array
from .context import AppContext
from .errors import shown
from .player import STAMP_JS, replay_player, speech_player, stop_js
from .reply import TurnEnd, failed, follow
from .session import session_key
from .widgets import turn_stamp

log = logging.getLogger(__name__)

HONEST_NOTE = """
**What voice cloning can and cannot do with Qwen2.5-Omni.** The released weights lack the
speech *encoder*, so the model cannot imitate a voice the way the paper's zero-shot TTS
does. What it can do: its speech decoder takes a reference recording (as a mel
spectrogram) and renders the timbre from it, while the rhythm and speaking style come from
the base voice you pick (Chelsie or Ethan). Expect a voice that sounds *closer* to the
reference, not a copy of it. The text is read exactly as typed, sentence by sentence.
Use recordings of people who agreed to it.
"""


def build(app: AppContext, gpu_queue: str, chat_voice_pickers: list[gr.Dropdown]) -> gr.Dropdown:
    """Lay out the tab; a created voice also appears in ``chat_voice_pickers``."""
    backend = app.backend
    stock = backend.stock_voices()
    can_create = backend.info.can_create_voices
    gr.Markdown(HONEST_NOTE)
    with gr.Row():
        with gr.Column(scale=3):
            text = gr.Textbox(label="Text to speak", lines=5, elem_id="tts-text",
                              placeholder="The exact words to read aloud; long texts are read sentence by sentence")
            voice = gr.Dropdown(backend.voices(), value=stock[0], label="Voice", elem_id="tts-voice")
            with gr.Row():
                speak = gr.Button("Speak", variant="primary", elem_id="tts-speak")
                compare = gr.Button("Compare with stock voice", elem_id="tts-compare")
                stop = gr.Button("Stop", variant="stop", elem_id="tts-stop")
            stamp = turn_stamp()
            status = gr.Markdown("", elem_id="tts-status")
            speech = speech_player("tts", app.speech)
            replay = replay_player("tts-replay", "Replay the speech")
            download = gr.File(label="Download WAV", interactive=False, elem_id="tts-download")
        with gr.Column(scale=2):
            gr.Markdown("### Make a voice from a recording (3-30 s of one person speaking)")
            if not can_create:
                gr.Markdown("*The model server behind this app can't make new voices; the stock voices work.*")
            reference = gr.Audio(sources=["upload", "microphone"], type="numpy", label="Reference recording",
                                 elem_id="tts-reference")
            base = gr.Dropdown(stock, value=stock[0], label="Base voice (speaking style)")
            name = gr.Textbox(label="Name of the new voice", value="My voice", elem_id="tts-name")
            save = gr.Checkbox(False, label="Save it in the voices folder", visible=backend.info.can_save_voices)
            create = gr.Button("Create voice", elem_id="tts-create", interactive=can_create)
    # Each browser session's TTS request lives in its session like a chat's reply, so that
    # Stop and a closed browser tab stop it.
    sessions = app.sessions.tab("tts")

    @shown
    def create_voice(recorded, base_name, voice_name, keep, request: gr.Request):
        if recorded is None:
            raise RequestError("Upload or record a reference first (3-30 s of speech).")
        audio = audio_from_array(recorded[1], recorded[0], app.media, name="The reference recording")
        name = (voice_name or "").strip()
        voice_id = backend.create_voice(name, audio, base_name, save=bool(keep))
        app.add_session_voice(name, voice_id, base_name, request)
        note = f"Voice **{name}** is ready (based on {base_name})."
        if keep:
            note += " It is saved in the voices folder."
        choices = app.voices_for(request)
        return [gr.update(choices=choices, value=name), note] + [gr.update(choices=choices)
                                                                 for _ in chat_voice_pickers]

    @shown
    def read(words, voice_name, request: gr.Request, sent_at=None):
        yield from _speak(words, app.resolve_voice(voice_name, request), request, TurnEnd.from_browser(sent_at))

    @shown
    def read_with_stock(words, voice_name, request: gr.Request, sent_at=None):
        yield from _speak(words, app.base_voice(voice_name, request), request, TurnEnd.from_browser(sent_at))

    def _speak(words, voice_id, request, turn: TurnEnd):
        """Yields (speech, status, replay WAV, download WAV), all four every time (see run_reply)."""
        if not words or not words.strip():
            raise RequestError("Type the text to speak first.")
        session = sessions.get(request)
        cancel, _, _ = session.take_over([])  # a new text replaces one still being read
        key = session_key(request)
        # How long a text reads is not known ahead: the player looks a few seconds ahead.
        reply = app.speech.new_reply(True, turn.for_page(), None)
        yield reply.value, "Speaking…", None, None
        try:
            asked_for = Request(voice=voice_id, limits=app.limits, speak_text=words)
            for event, status in follow(app, asked_for, cancel, reply, turn, "Speaking…"):
                if isinstance(event, Done):
                    wav = app.speech.save_wav(key, "tts", reply)
                    yield reply.value, status, wav, wav
                elif isinstance(event, (AudioChunk, Notice)):
                    yield reply.value, status, None, None
        except Exception as exc:
            # The page's player plays out what came and stops waiting; the error is shown by `shown`.
            yield reply.finish(), failed(exc, "speech"), None, None
            raise
        finally:
            session.release(cancel)

    @shown
    def tts_on_stop(request: gr.Request):
        sessions.get(request).cancel_reply()

    outputs = [speech, status, replay, download]
    create.click(create_voice, inputs=[reference, base, name, save], outputs=[voice, status, *chat_voice_pickers],
                 api_name="create_voice")
    common = dict(outputs=outputs, js=STAMP_JS, concurrency_limit=1, concurrency_id=gpu_queue,
                  show_progress_on=[status])
    by_speak = speak.click(read, inputs=[text, voice, stamp], api_name="speak", **common)
    by_compare = compare.click(read_with_stock, inputs=[text, voice, stamp], api_name="speak_stock", **common)
    stop.click(tts_on_stop, js=stop_js("tts"), queue=False, cancels=[by_speak, by_compare], api_visibility="private")
    return voice
