"""A server's streamed chat chunks, read back into our events. Two dialects:

- ``openai`` (our server, and any OpenAI-shaped stream): text in ``delta.content`` or in
  ``delta.audio.transcript``; speech as base64 16-bit PCM pieces in ``delta.audio.data``;
  our extensions ``notice`` and ``stats``.
- ``vllm-omni``: every chunk says its ``modality``; an audio chunk carries base64 audio in
  ``choices[0].delta.content``: a whole WAV file per chunk by default, raw 16-bit PCM when
  asked for ``pcm`` (vllm_omni/entrypoints/openai/serving_chat.py, ``_create_audio_choice``
  and ``chat_completion_stream_generator``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections.abc import Iterable, Iterator

import numpy as np

from ..errors import BackendUnavailable, OmniError, RequestError, hidden
from ..events import AudioChunk, Event, Notice, TextDelta
from .pcm import SPEECH_RATE, from_pcm16

log = logging.getLogger(__name__)

DONE_LINE = "[DONE]"


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined), up to ``[DONE]``."""
    pieces: list[str] = []
    for line in lines:
        if not line:
            if pieces:
                data = "\n".join(pieces)
                pieces = []
                if data == DONE_LINE:
                    return
                yield data
            continue
        if line.startswith("data:"):
            pieces.append(line[5:].removeprefix(" "))
    if pieces and "\n".join(pieces) != DONE_LINE:
        yield "\n".join(pieces)


class ChunkReader:
    """Turns one reply's chunks into events and keeps what the last chunks report."""

    def __init__(self, dialect: str, where: str) -> None:
        self.dialect = dialect
        self.where = where
        self.finish_reason: str | None = None
        self.usage: dict = {}
        self.stats: dict = {}
        self._odd = b""  # a byte of a 16-bit sample split across two pieces

    def feed(self, data: str) -> list[Event]:
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise BackendUnavailable(f"The model server at {self.where} sent something that is not JSON: "
                                     f"{data[:120]!r}.") from exc
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error"):
            raise server_error(chunk["error"], self.where)
        if chunk.get("type") == "speech.audio.delta":  # /v1/audio/speech with stream_format "sse"
            return self._audio(str(chunk.get("audio") or ""), whole_files=False)
        if chunk.get("type") == "speech.audio.done":
            self.stats, self.finish_reason = chunk.get("stats") or {}, "stop"
            return []
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("stats"), dict):
            self.stats = chunk["stats"]
        events: list[Event] = []
        if isinstance(chunk.get("notice"), dict):
            notice = chunk["notice"]
            level = "info" if notice.get("level") == "info" else "warning"
            position = notice.get("queue_position")
            events.append(Notice(str(notice.get("message", "")), level,
                                 int(position) if isinstance(position, int) else None))
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return events
        choice = choices[0]
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        delta = choice.get("delta") or {}
        if self.dialect == "vllm-omni" and chunk.get("modality") == "audio":
            content = delta.get("content")
            if content:
                events += self._audio(content, whole_files=True)
            return events
        if isinstance(delta.get("content"), str) and delta["content"]:
            events.append(TextDelta(delta["content"]))
        audio = delta.get("audio")
        if isinstance(audio, dict):
            if audio.get("transcript"):
                events.append(TextDelta(audio["transcript"]))
            if audio.get("data"):
                events += self._audio(audio["data"], whole_files=False)
        return events

    def _audio(self, encoded: str, whole_files: bool) -> list[Event]:
        try:
            data = base64.b64decode(encoded)
        except (binascii.Error, ValueError) as exc:
            raise BackendUnavailable(f"The model server at {self.where} sent audio that is not base64.") from exc
        if data[:4] == b"RIFF":
            return [_wav_chunk(data, self.where)] if whole_files else self._pcm(_wav_payload(data))
        return self._pcm(data)

    def _pcm(self, data: bytes) -> list[Event]:
        data = self._odd + data
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        samples = from_pcm16(data[:cut])
        return [AudioChunk(SPEECH_RATE, samples)] if len(samples) else []


def _wav_chunk(data: bytes, where: str) -> AudioChunk:
    """A whole WAV file (vLLM-Omni sends one per audio chunk), as int16 samples."""
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise hidden(BackendUnavailable, f"The model server at {where} sent audio that could not be decoded.", exc,
                     log) from exc
    mono = samples[:, 0] if samples.shape[1] == 1 else np.round(samples.mean(axis=1)).astype(np.int16)
    return AudioChunk(int(rate), np.ascontiguousarray(mono))


def _wav_payload(data: bytes) -> bytes:
    """The samples after a streamed WAV's header (the first piece of a ``wav`` stream)."""
    start = data.find(b"data")
    return data[start + 8:] if start >= 0 else b""


def server_error(error, where: str) -> OmniError:
    """The error a server reported, as ours: its message for requests it refused."""
    if not isinstance(error, dict):
        return BackendUnavailable(f"The model server at {where} failed: {error}")
    message = str(error.get("message") or "no message")
    kind, code = str(error.get("type", "")), str(error.get("code", ""))
    if kind == "server_error" or "internal" in kind.lower() or code.startswith("5"):
        return BackendUnavailable(f"The model server at {where} failed: {message}")
    return RequestError(message)
