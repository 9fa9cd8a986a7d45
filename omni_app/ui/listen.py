"""The page's own listener, shared by the voice and video chat tabs (one per page, above the tabs).

The browser captures the microphone and detects turns itself (``js/listen.js``, silero VAD
in the page): between turns nothing reaches the server. A finished turn arrives once, as a
``voice_turn`` or ``video_turn`` event of the listener component carrying 16 kHz PCM and
when the speech began and ended; the tab's reply handler takes it with :func:`page_turn`.
The page silences a reply the person talks over by itself, then sends ``barge`` so the
server stops generating it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from .. import web_modules
from ..errors import RequestError
from ..media import MODEL_SAMPLE_RATE
from ..vad import MIN_SILENCE_RANGE, VadOptions
from .errors import shown
from .session import SessionStore

log = logging.getLogger(__name__)

JS = Path(__file__).with_name("js")

#: The longest turn the page sends (it cuts a longer one there); a little slack for its pad.
MAX_TURN_SECONDS = 61.0

TEMPLATE = """
<div class="omni-listen">
  <button class="omni-listen-toggle" type="button" id="listen-toggle">🎙 Start listening</button>
  <select class="omni-listen-device" aria-label="Microphone"><option value="">Default microphone</option></select>
  <span class="omni-listen-line" aria-live="polite">Press Start listening, then talk and pause.</span>
</div>
"""
CSS = """
.omni-listen { display: flex; flex-wrap: wrap; gap: 0.5em 0.8em; align-items: center; }
.omni-listen-toggle { padding: 0.5em 1em; border-radius: 8px; font-weight: 600;
  background: var(--button-primary-background-fill); color: var(--button-primary-text-color); }
.omni-listen-device { max-width: 100%; padding: 0.35em; border-radius: 6px;
  border: 1px solid var(--border-color-primary); background: var(--input-background-fill); }
.omni-listen-line { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
"""


@functools.cache
def page_script() -> str:
    """listen.js with the echo guard's worklet source built in."""
    script = (JS / "listen.js").read_text().replace('"__GUARD_SOURCE__"', json.dumps((JS / "echo.js").read_text()))
    script = script.replace("__INPUT_SAMPLE_RATE__", str(MODEL_SAMPLE_RATE))
    return script.replace("</", "<\\/")


@dataclass(frozen=True)
class PageTurn:
    """A turn the page heard: the speech at 16 kHz and when it began and ended (this server's
    monotonic clock, from the page's own clock and the moment it sent the turn)."""

    audio: np.ndarray
    began: float
    ended: float
    #: When the speech ended on the page's clock (epoch seconds), for its "heard after" figure.
    stamp: float

    @property
    def seconds(self) -> float:
        return len(self.audio) / MODEL_SAMPLE_RATE


def page_turn(data) -> PageTurn:
    """Read and check a turn event's data (a clear message for anything malformed)."""
    if not isinstance(data, dict) or not isinstance(data.get("pcm"), str):
        raise RequestError("The page sent a turn without its audio: reload the page and try again.")
    if data.get("sample_rate") != MODEL_SAMPLE_RATE:
        raise RequestError(f"The page sent a turn at {data.get('sample_rate')} Hz instead of {MODEL_SAMPLE_RATE} Hz: "
                           "reload the page and try again.")
    if len(data["pcm"]) > MAX_TURN_SECONDS * MODEL_SAMPLE_RATE * 2 * 4 / 3 + 4:
        raise RequestError(f"Your turn was longer than {MAX_TURN_SECONDS:.0f} s: please pause now and then.")
    unreadable = RequestError("The page sent a turn whose audio could not be read: reload the page and try again.")
    try:
        raw = base64.b64decode(data["pcm"], validate=True)
    except (binascii.Error, ValueError):
        raise unreadable from None
    if len(raw) % 2 or not raw:
        raise unreadable
    audio = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    try:
        began, ended, sent = (float(data[key]) for key in ("began", "ended", "sent"))
    except (KeyError, TypeError, ValueError):
        began = ended = sent = time.time()
    now = time.monotonic()
    # The span on this server's clock: how long before sending the page heard it.
    age = lambda moment: min(max(sent - moment, 0.0), 3600.0)  # noqa: E731
    return PageTurn(audio, now - age(began), now - age(ended), ended)


class PageListener:
    """The listener component, the end-of-turn pause slider, and the barge-in wiring."""

    def __init__(self, options: VadOptions) -> None:
        self.options = options
        folder = web_modules.check_installed()
        gr.set_static_paths([folder / name for name in web_modules.FILES])
        config = {"urls": web_modules.urls(folder), "pauseMs": options.min_silence_ms}
        low, high = MIN_SILENCE_RANGE
        head = (f'<script src="{config["urls"]["ort"]}"></script><script src="{config["urls"]["vad"]}"></script>'
                f"<script>{page_script()}</script>")
        with gr.Row(equal_height=True):
            # The event names must appear quoted here for gradio to offer them as listeners.
            # min_width: on a phone the two stack instead of squeezing side by side.
            self.html = gr.HTML("", html_template=TEMPLATE, css_template=CSS, head=head, elem_id="live-listen",
                                scale=3, min_width=320, padding=False,
                                js_on_load=f"/* 'voice_turn' 'video_turn' 'barge' */ "
                                           f"OmniListen.attach(element, trigger, {json.dumps(config)});")
            self.silence = gr.Slider(low, high, value=options.min_silence_ms, step=50, scale=2, min_width=320,
                                     label="Pause that ends your turn (ms)", elem_id="live-pause",
                                     info="Shorter answers sooner; longer lets you pause mid-sentence.")
        self.silence.change(None, inputs=[self.silence], js="(ms) => { OmniListen.setPause(ms); }")
        self._stores: dict[str, SessionStore] = {}

    def turns(self, tab: str, sessions: SessionStore):
        """The event of turns heard while ``tab`` ("voice" or "video") is shown."""
        self._stores[tab] = sessions
        return getattr(self.html, f"{tab}_turn")

    def wire(self) -> None:
        """The server's part of barge-in: stop generating the reply the person talked over."""
        stores = dict(self._stores)

        @shown
        def barge(request: gr.Request, event: gr.EventData):
            tab = (event._data or {}).get("tab") if isinstance(event._data, dict) else None
            if tab in stores:
                stores[tab].get(request).cancel_reply()

        self.html.barge(barge, queue=False, show_progress="hidden", api_visibility="private")


def log_turn(turn: PageTurn) -> None:
    # A line tests and operators can read: when the turn reached the server (epoch seconds).
    log.info("turn received at %.3f after %.2f s of speech", time.time(), turn.seconds)
