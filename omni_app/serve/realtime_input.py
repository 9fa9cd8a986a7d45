"""The audio a realtime client streams in: the buffer not committed yet, and where its turns are.

Runs in a worker thread (silero VAD is CPU work): :meth:`InputAudio.append` takes one
decoded chunk and says what happened in it, and the connection turns that into events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import SPEECH_SAMPLE_RATE
from ..vad import SpeechStarted, TurnDetector, TurnEnded, VadOptions
from .parts import WireError
from .realtime_wire import TurnDetection

#: Silence kept in the buffer while nobody speaks (older audio is dropped).
IDLE_KEEP_SECONDS = 1.0
#: Of the pause that ended a turn, this much stays in the turn's audio.
KEEP_PAUSE_SECONDS = 0.2
#: The longest buffer (one turn): longer speech is cut into turns by the turn detection, or
#: committed by the client before this.
MAX_BUFFER_SECONDS = 120.0


@dataclass(frozen=True)
class Started:
    """The person began to speak, ``at_ms`` into the connection's audio."""

    at_ms: int


@dataclass(frozen=True)
class Stopped:
    """The person paused: the turn is ``audio`` (24 kHz int16), ending ``at_ms`` into the audio."""

    at_ms: int
    audio: np.ndarray


def ms(samples: int) -> int:
    return samples * 1000 // SPEECH_SAMPLE_RATE


class InputAudio:
    """One connection's input buffer, with the server's turn detection over it when asked for."""

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = min(MAX_BUFFER_SECONDS, max_seconds)
        self.buffer = np.zeros(0, np.int16)
        self.heard = 0  # samples since the connection opened
        self._detector: TurnDetector | None = None

    def append(self, samples: np.ndarray, detection: TurnDetection | None) -> list[Started | Stopped]:
        """Add a chunk (24 kHz int16); with ``detection``, the turns that started and ended in it."""
        if (len(self.buffer) + len(samples)) / SPEECH_SAMPLE_RATE > self.max_seconds:
            raise WireError(f"The input audio buffer would be longer than {self.max_seconds:g} s: commit it (or "
                            "clear it) first.", "audio", "input_audio_buffer_too_long")
        self.buffer = np.concatenate([self.buffer, samples])
        chunk_start = self.heard
        self.heard += len(samples)
        if detection is None:
            self._detector = None
            return []
        if self._detector is None:
            self._detector = TurnDetector(VadOptions(threshold=detection.threshold,
                                                     min_silence_ms=detection.silence_duration_ms))
        self._detector.set_min_silence(detection.silence_duration_ms)
        found: list[Started | Stopped] = []
        for happened in self._detector.feed(SPEECH_SAMPLE_RATE, samples):
            if isinstance(happened, SpeechStarted):
                # The lead-in the client asked for stays; the silence before it is no part of the turn.
                keep = len(samples) + detection.prefix_padding_ms * SPEECH_SAMPLE_RATE // 1000
                self.buffer = self.buffer[-keep:]
                found.append(Started(ms(chunk_start)))
            elif isinstance(happened, TurnEnded):
                pause = max(0.0, detection.silence_duration_ms / 1000 - KEEP_PAUSE_SECONDS)
                found.append(Stopped(ms(self.heard), self.take(int(pause * SPEECH_SAMPLE_RATE))))
        if not self._detector.speaking:
            self.buffer = self.buffer[-int(IDLE_KEEP_SECONDS * SPEECH_SAMPLE_RATE):]
        return found

    def take(self, drop_tail: int = 0) -> np.ndarray:
        """The buffer (less its last ``drop_tail`` samples), which is emptied."""
        audio = self.buffer[: max(0, len(self.buffer) - drop_tail)]
        self.buffer = np.zeros(0, np.int16)
        return audio

    def clear(self) -> None:
        self.buffer = np.zeros(0, np.int16)
        if self._detector is not None:
            self._detector.reset()
