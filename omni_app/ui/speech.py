"""A reply's speech on its way to the page's player, and the WAV files made of it.

The reply generator hands every :class:`~omni_app.events.AudioChunk` to a
:class:`ReplySpeech`, whose ``value`` is what the player component shows next: a header
line (the reply's id, how the user's turn ended) and one JSON record per new chunk with
its sequence number, how fast speech is being made (see :meth:`ReplySpeech.rate`) and
base64 int16 PCM. The page plays
the chunks in sequence order (see ``js/player.js``); one it missed it asks for again
(:meth:`SpeechStore.resend`). When the reply ends its speech is written once as a WAV
for the replay player and the download: exactly the samples that were streamed.
"""

from __future__ import annotations

import atexit
import base64
import json
import shutil
import tempfile
import threading
import time
import uuid
import wave
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..config import SPEECH_SAMPLE_RATE
from ..events import AudioChunk


class ReplySpeech:
    """One reply's speech: the records sent to the page and the samples for the WAV."""

    def __init__(self, speak: bool, turn: dict | None = None, max_seconds: float | None = None,
                 prior_rate: float | None = None, on_finish=None) -> None:
        #: Random and unguessable: the page asks for missed chunks by it.
        self.id = uuid.uuid4().hex
        #: Upper bound of the reply's speech (the length limit); ``None`` when unknown.
        self.max_seconds = max_seconds
        self.header = json.dumps({"reply": self.id, "speak": speak, "turn": turn or {}})
        self.chunks: list[np.ndarray] = []
        self.records: list[str] = []
        self.sample_rate = SPEECH_SAMPLE_RATE
        self._started: float | None = None
        self._first: tuple[float, float] | None = None  # (time, seconds of speech) at the first chunk
        self._last_at: float | None = None  # when the last chunk came
        #: How fast recent replies made speech after their first chunk (``None``: not known yet).
        self.prior_rate = prior_rate
        self._on_finish = on_finish
        #: The last record, once the reply has ended.
        self.end_record: str | None = None
        #: What the player component shows now (replaced, never appended: see the module doc).
        self.value = self.header

    def start(self) -> None:
        """The model began working on the reply: production rates count from here."""
        if self._started is None:
            self._started = time.monotonic()

    @property
    def seconds(self) -> float:
        """Seconds of speech so far."""
        return sum(len(c) for c in self.chunks) / self.sample_rate

    def add(self, chunk: AudioChunk) -> str:
        """Record a chunk; returns the player's new value (this chunk's record)."""
        self.start()
        samples = np.ascontiguousarray(chunk.samples, dtype="<i2")
        self.sample_rate = chunk.sample_rate
        self.chunks.append(samples)
        produced, now = self.seconds, time.monotonic()
        self._last_at = now
        if self._first is None:
            self._first = (now, produced)
        left = None if self.max_seconds is None else round(max(0.0, self.max_seconds - produced), 3)
        record = json.dumps({"seq": len(self.records), "sr": chunk.sample_rate, "rate": round(self.rate(now), 4),
                             "left": left, "pcm": base64.b64encode(samples.tobytes()).decode("ascii")})
        self.records.append(record)
        self.value = f"{self.header}\n{record}"
        return self.value

    def steady_rate(self, now: float | None = None) -> float | None:
        """Seconds of speech made per second since the first chunk (``None`` before a second one)."""
        if self._first is None or len(self.chunks) < 2:
            return None
        at, first = self._first
        elapsed = (time.monotonic() if now is None else now) - at
        return (self.seconds - first) / elapsed if elapsed > 1e-3 else None

    def rate(self, now: float | None = None) -> float:
        """How fast the rest of the speech will come, for the page's player to plan its start.

        Speech is made at a steady pace once the first chunk is out; the wait for the first
        chunk (the prompt, the first codes) is paid once and says nothing about the pace,
        so counting it would make the player wait far too long. From the second chunk on
        the pace is measured; at the first it is the pace of recent replies, and for the
        very first reply the overall rate so far (the cautious choice).
        """
        now = time.monotonic() if now is None else now
        steady = self.steady_rate(now)
        if steady is not None:
            return steady
        if self.prior_rate is not None:
            return self.prior_rate
        return self.seconds / max(now - (self._started or now), 1e-3)

    def finish(self) -> str:
        """No more speech: the end record says how many chunks there were."""
        # Paced up to the last chunk: a reply stopped a while after it teaches nothing slower.
        steady = self.steady_rate(self._last_at)
        if steady is not None and self._on_finish is not None:
            self._on_finish(steady)
            self._on_finish = None
        self.end_record = json.dumps({"end": len(self.records)})
        self.value = f"{self.header}\n{self.end_record}"
        return self.value

    def samples(self) -> np.ndarray:
        """All of the speech as one int16 array."""
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


class SpeechStore:
    """Recent replies (to resend a chunk the page missed) and the WAVs written of them.

    WAVs live in one temporary folder served as is (no copy into gradio's cache). Each tab
    of a browser session keeps its latest ``files_per_tab`` (the one its replay player
    shows, and the one before while the page may still load it); all of a session's files
    go when it ends (:meth:`drop_session`), and the oldest beyond ``max_files`` before that.
    """

    def __init__(self, files_per_tab: int = 2, max_files: int = 256, keep_seconds: float = 600.0) -> None:
        import gradio as gr

        self.folder = Path(tempfile.mkdtemp(prefix="omni-speech-"))
        gr.set_static_paths([self.folder])
        atexit.register(shutil.rmtree, self.folder, True)  # in case close() is never called
        self.files_per_tab = files_per_tab
        self.max_files = max_files
        self.keep_seconds = keep_seconds
        self._lock = threading.Lock()
        self._replies: OrderedDict[str, ReplySpeech] = OrderedDict()
        self._files: OrderedDict[Path, tuple[str, str]] = OrderedDict()  # file -> (session, tab), oldest first
        #: The pace at which recent replies made speech after their first chunk (seconds per second).
        self.recent_rate: float | None = None

    def _learn_rate(self, rate: float) -> None:
        # A moving average: one reply slowed by other work on the machine moves it only part way.
        with self._lock:
            self.recent_rate = rate if self.recent_rate is None else 0.5 * self.recent_rate + 0.5 * rate

    def new_reply(self, speak: bool, turn: dict | None = None, max_seconds: float | None = None) -> ReplySpeech:
        """A reply about to stream; kept while its speech fits in ``keep_seconds`` of recent replies."""
        reply = ReplySpeech(speak, turn, max_seconds, self.recent_rate, self._learn_rate)
        with self._lock:
            self._replies[reply.id] = reply
            total = sum(r.seconds for r in self._replies.values())
            while len(self._replies) > 1 and total > self.keep_seconds:
                _, old = self._replies.popitem(last=False)
                total -= old.seconds
            while len(self._replies) > 64:
                self._replies.popitem(last=False)
        return reply

    def resend(self, ask: dict) -> str:
        """Records ``start`` to ``stop`` of a reply again, for a page that missed them."""
        try:
            reply = self._replies.get(str(ask.get("reply")))
            start, stop = int(ask.get("start", 0)), ask.get("stop")
        except (AttributeError, TypeError, ValueError):
            return ""
        if reply is None:
            return ""
        stop = len(reply.records) if stop is None else int(stop)
        lines = reply.records[max(0, start):stop]
        if stop >= len(reply.records) and reply.end_record is not None:
            lines.append(reply.end_record)
        return "\n".join(lines)

    def save_wav(self, session: str, tab: str, reply: ReplySpeech) -> str | None:
        """Write the reply's speech as a 16-bit mono WAV for a tab of ``session``; ``None`` if it had none."""
        samples = reply.samples()
        if not len(samples):
            return None
        path = self.folder / f"speech-{time.strftime('%Y%m%d-%H%M%S')}-{reply.id[:8]}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(reply.sample_rate)
            out.writeframes(samples.astype("<i2").tobytes())
        with self._lock:
            self._files[path] = (session, tab)
            mine = [p for p, owner in self._files.items() if owner == (session, tab)]
            stale = mine[:-self.files_per_tab] + list(self._files)[:max(0, len(self._files) - self.max_files)]
            for old in dict.fromkeys(stale):
                self._forget(old)
        return str(path)

    def drop_session(self, session: str) -> None:
        """The browser session ended: remove its files."""
        with self._lock:
            for path in [p for p, owner in self._files.items() if owner[0] == session]:
                self._forget(path)

    def files(self, session: str | None = None) -> list[Path]:
        """The WAVs kept (of one session)."""
        return [p for p, owner in self._files.items() if session is None or owner[0] == session]

    def close(self) -> None:
        """Remove every file (the app is shutting down)."""
        with self._lock:
            self._files.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _forget(self, path: Path) -> None:
        self._files.pop(path, None)
        path.unlink(missing_ok=True)
