"""The speech player every speaking tab shares: Web Audio for the live reply, a WAV after it.

The live player is a ``gr.HTML`` component fed by the reply generator (its value is the
newest chunk, see :mod:`omni_app.ui.speech`); page-side code (``js/player.js``) plays the
chunks through an AudioWorklet the moment they arrive. No HLS, AAC or ffmpeg is on the
way. When the reply ends a plain, non-streaming audio player gets the whole speech as a
WAV to replay and download.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import gradio as gr
from gradio.data_classes import FileData

from ..config import SPEECH_SAMPLE_RATE
from .speech import SpeechStore

JS = Path(__file__).with_name("js")

TEMPLATE = ('<div class="omni-speech"><button class="omni-speech-unmute" type="button" hidden>'
            '🔇 Tap to turn on sound</button><span class="omni-speech-line" aria-live="polite"></span></div>')
CSS = (".omni-speech { min-height: 1.4em; font-size: var(--text-sm); color: var(--body-text-color-subdued); }\n"
       ".omni-speech-unmute { margin-right: 0.6em; padding: 0.3em 0.8em; border-radius: 6px; font-weight: 600;"
       " background: var(--button-primary-background-fill); color: var(--button-primary-text-color); }\n"
       ".omni-speech-unmute[hidden] { display: none; }")


@functools.cache
def page_script() -> str:
    """player.js with the worklet's source (playout.js + worklet.js) built in."""
    worklet = (JS / "playout.js").read_text() + "\n" + (JS / "worklet.js").read_text()
    script = (JS / "player.js").read_text().replace('"__WORKLET_SOURCE__"', json.dumps(worklet))
    script = script.replace("__SPEECH_SAMPLE_RATE__", str(SPEECH_SAMPLE_RATE))
    # Inside <script>, "</" could end the element early; JavaScript reads "<\/" the same.
    return script.replace("</", "<\\/")


def page_head() -> str:
    """What the page's ``<head>`` carries for every speaking tab: the players' script."""
    return f"<script>{page_script()}</script>"


def speech_player(name: str, store: SpeechStore) -> gr.HTML:
    """The live player of tab ``name`` (its element id is ``{name}-speech``)."""

    def resend(ask):
        return store.resend(ask)

    # The players' script is in the page's head once (page_head), not once per player.
    return gr.HTML("", html_template=TEMPLATE, css_template=CSS,
                   js_on_load=f"OmniSpeech.attach({json.dumps(name)}, element, props, watch, server);",
                   elem_id=f"{name}-speech", server_functions=[resend], padding=False)


def replay_player(elem_id: str, label: str = "Replay or download the spoken reply") -> gr.Audio:
    """A plain, non-streaming audio player for the reply's whole speech, filled when it ends."""
    audio = gr.Audio(label=label, type="filepath", interactive=False, streaming=False, autoplay=False,
                     elem_id=elem_id)
    audio.postprocess = functools.partial(_our_wav_as_is, audio.postprocess)
    return audio


def _our_wav_as_is(postprocess, value):
    # gr.Audio probes every file it is given with ffprobe; the app's WAVs are 16-bit PCM by
    # construction, so they are passed on as they are (a subclass would make gradio write
    # a type stub next to this file).
    if isinstance(value, str) and value.endswith(".wav") and Path(value).is_file():
        return FileData(path=value, orig_name=Path(value).name)
    return postprocess(value)


def stop_js(name: str) -> str:
    """Browser code that silences tab ``name``'s player at once."""
    return f"(...args) => {{ window.OmniSpeech && OmniSpeech.stop({json.dumps(name)}); return args; }}"


#: Replaces the last input (a hidden number) with the moment the user sent the turn (epoch seconds).
STAMP_JS = "(...args) => [...args.slice(0, -1), Date.now() / 1000]"
