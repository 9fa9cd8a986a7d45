"""Microphone turn-taking shared by the voice and video chat tabs.

The page has one live microphone (gradio 6 runs only one streaming microphone per page:
a second one fails to start its recorder), above the tabs; its turns go to the chat tab
on show. The microphone keeps streaming. A CPU handler runs voice activity detection per
session; when the user pauses it queues the utterance and bumps that tab's hidden counter
whose change starts the reply. When the user starts speaking while a reply runs, the
reply is stopped and the page's speech player silenced (barge-in).
"""

from __future__ import annotations

import logging
import time

import gradio as gr

from ..vad import MIN_SILENCE_RANGE, SpeechStarted, TurnDetector, TurnEnded, VadOptions
from .errors import shown
from .session import ChatSession, SessionStore

log = logging.getLogger(__name__)

#: Seconds of microphone audio per chunk sent to the server. Voice activity detection can
#: only decide when a chunk arrives, so a chunk adds up to its length to the end of every
#: turn (on average half of it). Each chunk is one upload and one event: a listening
#: session cost the server 0.21 CPU cores with 0.1 s chunks and 0.17 with 0.25 s ones
#: (2-core machine), a fair price for ending turns ~75 ms sooner. 0.1 s is also what
#: gradio uses for a microphone on a tab that is not shown at load.
MIC_CHUNK_SECONDS = 0.1


class LiveMicrophone:
    """The page's streaming microphone, the user's end-of-turn pause, and where turns go."""

    def __init__(self, options: VadOptions) -> None:
        self.options = options
        low, high = MIN_SILENCE_RANGE
        with gr.Row(equal_height=True):
            # No live waveform: redrawing it for every chunk kept a browser core busy.
            self.mic = gr.Audio(sources=["microphone"], streaming=True, elem_id="live-mic", scale=3,
                                waveform_options=gr.WaveformOptions(show_recording_waveform=False),
                                label="Microphone for voice and video chat: press Record once, then speak and pause")
            self.silence = gr.Slider(low, high, value=options.min_silence_ms, step=50, scale=2,
                                     label="Pause that ends your turn (ms)", elem_id="live-pause",
                                     info="Shorter answers sooner; longer lets you pause mid-sentence.")
        self._routes: dict[str, tuple[SessionStore, gr.Number, gr.Number]] = {}

    def route(self, tab: str, sessions: SessionStore) -> tuple[gr.Number, gr.Number]:
        """Turns heard while tab ``tab`` is shown go to its sessions: the hidden counters its
        turns and barge-ins bump (made here, in the tab's layout)."""
        turn, barge = gr.Number(value=0, visible="hidden"), gr.Number(value=0, visible="hidden")
        self._routes[tab] = (sessions, turn, barge)
        return turn, barge

    def wire(self, tabs: dict[str, gr.Tab], first: str) -> None:
        """Follow the tab on show (``first`` at load) and run turn-taking on the microphone."""
        shown_tab = gr.State(first)
        for tab_id, tab in tabs.items():
            tab.select(lambda tab_id=tab_id: tab_id, outputs=[shown_tab], queue=False, api_visibility="private")
        routes = list(self._routes.items())
        outputs = [block for _, (_, turn, barge) in routes for block in (turn, barge)]

        @shown
        def on_mic(chunk, silence_ms, tab, request: gr.Request):
            updates = [gr.skip()] * len(outputs)
            for k, (tab_id, (sessions, _, _)) in enumerate(routes):
                if tab_id == tab:
                    updates[2 * k:2 * k + 2] = feed_microphone(sessions.get(request), chunk, self.options, silence_ms)
                else:
                    forget_half_turn(sessions, request)
            return updates

        self.mic.stream(on_mic, inputs=[self.mic, self.silence, shown_tab], outputs=outputs,
                        stream_every=MIC_CHUNK_SECONDS, concurrency_limit=None, show_progress="hidden",
                        api_visibility="private")


def feed_microphone(session: ChatSession, chunk, options: VadOptions, silence_ms=None) -> tuple:
    """Handle one microphone chunk. Returns updates for (turn counter, barge-in counter)."""
    if chunk is None:
        return gr.skip(), gr.skip()
    sample_rate, samples = chunk
    with session.lock:
        if session.detector is None:
            session.detector = TurnDetector(options)
        if silence_ms is not None:
            session.detector.set_min_silence(int(silence_ms))
        events = session.detector.feed(sample_rate, samples)
    turn, barge = gr.skip(), gr.skip()
    for event in events:
        if isinstance(event, SpeechStarted):
            # Barge-in: stop a reply still being generated, and silence one still playing
            # (generation usually finishes long before playback does).
            session.cancel_reply()
            barge = time.time()
        elif isinstance(event, TurnEnded):
            session.turns.append((event.audio, time.monotonic()))
            session.turn_count += 1
            # A line tests and operators can read: when the user's turn ended (epoch seconds).
            log.info("turn ended at %.3f after %.2f s of speech", time.time(), event.seconds)
            turn = session.turn_count
    return turn, barge


def forget_half_turn(sessions: SessionStore, request) -> None:
    """The user switched tabs while speaking: the other tab's detector drops its half utterance
    (it would otherwise be glued to the next turn there, or answered alone much later)."""
    browser = sessions.sessions.find(request)
    chat = browser.chats.get(sessions.name) if browser is not None else None
    if chat is not None and chat.detector is not None and chat.detector.speaking:
        with chat.lock:
            chat.detector.reset()


def take_turn(session: ChatSession):
    """The oldest utterance waiting for an answer and when it ended, or ``(None, None)``."""
    try:
        return session.turns.popleft()
    except IndexError:
        return None, None
