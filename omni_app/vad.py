"""Turn-taking on the server: voice activity detection with silero-vad, on the CPU.

The web page detects turns itself (ui/js/listen.js); this is for a stream of raw audio
that reaches the server (and for bench/vad_pauses.py, which picks the default pause).
Feed the chunks as they come (any sample rate, any length); the detector says when the
person starts speaking (for barge-in) and hands over the whole utterance, 16 kHz mono
float32, once they pause. One detector per stream: silero's model keeps state between
windows. :class:`VadOptions` is also the page's end-of-turn setting.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import gcd

import numpy as np

from .errors import RequestError
from .media import MODEL_SAMPLE_RATE

WINDOW = 512  # silero-vad's window at 16 kHz (32 ms)


@dataclass(frozen=True)
class SpeechStarted:
    """The user started speaking (a reply that is playing should stop)."""


@dataclass(frozen=True)
class TurnEnded:
    """The user paused after speaking: ``audio`` is the utterance at 16 kHz."""

    audio: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.audio) / MODEL_SAMPLE_RATE


VadEvent = SpeechStarted | TurnEnded


#: The end-of-turn pauses a user may choose (milliseconds).
MIN_SILENCE_RANGE = (100, 2000)


@dataclass(frozen=True)
class VadOptions:
    """How eagerly a pause ends the turn."""

    threshold: float = 0.5
    #: A pause this long ends the turn. Shorter answers sooner but cuts more questions in
    #: the middle: bench/vad_pauses.py measures both on spoken questions with a pause
    #: inside. 600 ms is the shortest that cut none with pauses up to 600 ms; it ends a
    #: turn about 0.75 s after the speech (700 ms: 0.85 s).
    min_silence_ms: int = 600
    #: Audio kept before the detected start and after the end, so no syllable is cut.
    speech_pad_ms: int = 200
    #: Shorter bursts (a cough, a click) are not a turn.
    min_speech_ms: int = 300
    #: A turn is cut here even without a pause.
    max_turn_seconds: float = 60.0

    def __post_init__(self) -> None:
        low, high = MIN_SILENCE_RANGE
        if not low <= self.min_silence_ms <= high:
            raise RequestError(f"the end-of-turn pause must be between {low} and {high} ms, not {self.min_silence_ms}")
        if not 0 < self.threshold < 1:
            raise RequestError("the speech threshold must be between 0 and 1")


class TurnDetector:
    """Per-session voice activity detection over a stream of microphone chunks."""

    def __init__(self, options: VadOptions = VadOptions()) -> None:
        from silero_vad import VADIterator, load_silero_vad

        self.options = options
        self._vad = VADIterator(load_silero_vad(), threshold=options.threshold, sampling_rate=MODEL_SAMPLE_RATE,
                                min_silence_duration_ms=options.min_silence_ms,
                                speech_pad_ms=options.speech_pad_ms)
        self._pending = np.zeros(0, np.float32)  # < one window, waiting for more
        self._preroll = np.zeros(0, np.float32)  # recent audio before speech starts
        self._speech: list[np.ndarray] | None = None  # the current utterance, while speaking
        self._start = 0  # where silero put the utterance's start (samples since the last reset)
        self.speaking = False

    def set_min_silence(self, ms: int) -> None:
        """Change the pause that ends a turn, from the next audio on (speech heard so far is kept)."""
        if int(ms) == self.options.min_silence_ms:
            return
        self.options = replace(self.options, min_silence_ms=int(ms))  # validates the range
        self._vad.min_silence_samples = MODEL_SAMPLE_RATE * self.options.min_silence_ms / 1000

    def reset(self) -> None:
        """Forget everything heard so far (e.g. after the chat was cleared)."""
        self._vad.reset_states()
        self._pending = np.zeros(0, np.float32)
        self._preroll = np.zeros(0, np.float32)
        self._speech = None
        self._start = 0
        self.speaking = False

    def feed(self, sample_rate: int, samples: np.ndarray) -> list[VadEvent]:
        """Add a microphone chunk; returns what happened in it (usually nothing)."""
        import torch

        audio = _to_16k_mono(sample_rate, samples)
        buffer = np.concatenate([self._pending, audio])
        usable = len(buffer) // WINDOW * WINDOW
        self._pending = buffer[usable:]
        events: list[VadEvent] = []
        pad = int(self.options.speech_pad_ms * MODEL_SAMPLE_RATE / 1000)
        for start in range(0, usable, WINDOW):
            window = buffer[start:start + WINDOW]
            result = self._vad(torch.from_numpy(window.copy()))
            if self._speech is None:
                self._preroll = np.concatenate([self._preroll, window])[-(pad + WINDOW):]
            else:
                self._speech.append(window)
            if result and "start" in result and self._speech is None:
                self._start = result["start"]
                self._speech = [self._preroll.copy()]
                self.speaking = True
                events.append(SpeechStarted())
            elif self._speech is not None and (
                (result and "end" in result)
                or sum(len(c) for c in self._speech) > self.options.max_turn_seconds * MODEL_SAMPLE_RATE
            ):
                utterance = np.concatenate(self._speech)
                ended = bool(result and "end" in result)
                # Cut at the length limit while still speaking: the next turn starts right away
                # (silero reports no new start while it is still in its speech state).
                still_speaking = not ended and self._vad.triggered
                self._speech = [] if still_speaking else None
                self.speaking = still_speaking
                self._preroll = np.zeros(0, np.float32)
                # The speech itself, without the padding silero adds on both sides (the utterance
                # also holds the pause that ended it, so its length says nothing of a cough).
                spoken = result["end"] - self._start - 2 * pad if ended else len(utterance)
                if spoken >= self.options.min_speech_ms * MODEL_SAMPLE_RATE / 1000:
                    events.append(TurnEnded(utterance))
        return events


def _to_16k_mono(sample_rate: int, samples: np.ndarray) -> np.ndarray:
    """Microphone chunk (int16 or float, mono or (n, channels)) to 16 kHz mono float32."""
    from scipy.signal import resample_poly

    data = np.asarray(samples)
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    if sample_rate != MODEL_SAMPLE_RATE and len(data):
        # Polyphase resampling works chunk by chunk without state (48 kHz -> 16 kHz is /3).
        g = gcd(int(sample_rate), MODEL_SAMPLE_RATE)
        data = resample_poly(data, MODEL_SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
    return data
