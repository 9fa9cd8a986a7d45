"""Microphone turn-taking shared by the voice and video chat tabs.

The microphone keeps streaming. A CPU handler runs voice activity detection per session;
when the user pauses it queues the utterance and bumps a hidden counter whose change
starts the reply. When the user starts speaking while a reply runs, the reply is stopped
and the browser's player paused (barge-in).
"""

from __future__ import annotations

import logging
import time

import gradio as gr

from ..vad import SpeechStarted, TurnDetector, TurnEnded
from .session import ChatSession

log = logging.getLogger(__name__)

#: Pauses every audio element of the page (run in the browser on barge-in and Stop).
PAUSE_AUDIO_JS = "() => { document.querySelectorAll('audio').forEach((a) => a.pause()); }"


def feed_microphone(session: ChatSession, chunk) -> tuple:
    """Handle one microphone chunk. Returns updates for (turn counter, barge-in counter)."""
    if chunk is None:
        return gr.skip(), gr.skip()
    sample_rate, samples = chunk
    with session.lock:
        if session.detector is None:
            session.detector = TurnDetector()
        events = session.detector.feed(sample_rate, samples)
    turn, barge = gr.skip(), gr.skip()
    for event in events:
        if isinstance(event, SpeechStarted):
            # Barge-in: stop a reply still being generated, and pause one still playing
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
