"""Microphone turn-taking shared by the voice and video chat tabs.

The microphone keeps streaming. A CPU handler runs voice activity detection per session;
when the user pauses it queues the utterance and bumps a hidden counter whose change
starts the reply. When the user starts speaking while a reply runs, the reply is stopped
and the page's speech player silenced (barge-in).
"""

from __future__ import annotations

import logging
import time

import gradio as gr

from ..vad import MIN_SILENCE_RANGE, SpeechStarted, TurnDetector, TurnEnded, VadOptions
from .session import ChatSession

log = logging.getLogger(__name__)

#: Seconds of microphone audio per chunk sent to the server. Voice activity detection can
#: only decide when a chunk arrives, so a chunk adds up to its length to the end of every
#: turn (on average half of it). Each chunk is one upload and one event: a listening
#: session cost the server 0.21 CPU cores with 0.1 s chunks and 0.17 with 0.25 s ones
#: (2-core machine), a fair price for ending turns ~75 ms sooner. 0.1 s is also what
#: gradio uses for a microphone on a tab that is not shown at load.
MIC_CHUNK_SECONDS = 0.1


def silence_slider(options: VadOptions) -> gr.Slider:
    """The user's end-of-turn pause, starting at the app's default."""
    low, high = MIN_SILENCE_RANGE
    return gr.Slider(low, high, value=options.min_silence_ms, step=50, label="Pause that ends your turn (ms)",
                     info="Shorter answers sooner; longer lets you pause mid-sentence without being cut off.")


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


def take_turn(session: ChatSession):
    """The oldest utterance waiting for an answer and when it ended, or ``(None, None)``."""
    try:
        return session.turns.popleft()
    except IndexError:
        return None, None
