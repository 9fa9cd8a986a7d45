"""Our events out, OpenAI's JSON in their place: streamed chunks, whole replies, speech events.

Streamed audio follows OpenAI's shape: ``delta.audio`` objects carrying the reply's ``id``,
``transcript`` pieces (the text, which then is not in ``content``) and ``data`` pieces
(base64 16-bit PCM at 24 kHz; with ``wav`` the first piece starts with a WAV header of
open length). A text-only reply streams ``delta.content``. The last chunk has no choices
and carries ``usage`` and our measurements under ``stats``; notices travel as chunks with
a ``notice`` field.
"""

from __future__ import annotations

import time
import uuid

import numpy as np

from ..events import AudioChunk, Done, Event, Notice, TextDelta
from .pcm import SPEECH_RATE, b64, pcm16, wav_bytes, wav_header
from .wire import ChatCall

FINISH_REASONS = {"finished": "stop", "length": "length", "cancelled": "stop"}
#: How long a client may refer to a reply's audio id in a later turn (as OpenAI says it).
AUDIO_EXPIRY_SECONDS = 3600


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def stats_json(done: Done) -> dict:
    """Measurements of a reply, as the server saw them (seconds since it received the request)."""
    s = done.stats
    extra = dict(s.extra)
    seed = extra.pop("seed", None)
    return {
        "finish_reason": done.reason, "engine": s.engine, "seed": None if seed is None else int(seed),
        "time_to_first_text": s.time_to_first_text, "time_to_first_audio": s.time_to_first_audio,
        "total_time": s.total_time, "queue_time": s.queue_time, "audio_seconds": s.audio_seconds,
        "text_tokens": s.text_tokens, "codec_codes": s.codec_codes, "extra": extra, "served_by": s.served_by or None,
        "batch_peak": s.batch_peak or None,
    }


def usage_json(done: Done) -> dict:
    """Prompt and reply tokens (a relay passes on what its server counted)."""
    if done.trace is not None and done.trace.prompt_ids:
        prompt = len(done.trace.prompt_ids)
    else:
        prompt = int(done.stats.extra.get("prompt_tokens", 0))
    completion = done.stats.text_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def notice_json(notice: Notice) -> dict:
    out = {"level": notice.level, "message": notice.message}
    if notice.queue_position is not None:
        out["queue_position"] = notice.queue_position
    return out


class ChatChunks:
    """One streamed chat completion: each event becomes zero or more chunk objects."""

    def __init__(self, call: ChatCall, model: str) -> None:
        self.call = call
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.audio_id = f"audio_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.transcript: list[str] = []
        self._started = False
        self._header_sent = False

    def chunk(self, delta: dict | None, finish: str | None = None, **extra) -> dict:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def on_event(self, event: Event) -> list[dict]:
        """The chunks for one event; the first call also sends the role."""
        out = []
        if not self._started:
            self._started = True
            out.append(self.chunk({"role": "assistant", "content": None if self.call.audio_format else ""}))
        if isinstance(event, TextDelta):
            self.transcript.append(event.text)
            if self.call.audio_format:
                out.append(self.chunk({"audio": {"id": self.audio_id, "transcript": event.text}}))
            else:
                out.append(self.chunk({"content": event.text}))
        elif isinstance(event, AudioChunk) and self.call.audio_format:
            data = pcm16(event.samples)
            if self.call.audio_format == "wav" and not self._header_sent:
                data = wav_header(event.sample_rate) + data
                self._header_sent = True
            out.append(self.chunk({"audio": {"id": self.audio_id, "data": b64(data)}}))
        elif isinstance(event, Notice):
            # An empty delta: clients that read choices[0] of every chunk keep working.
            out.append(self.chunk({}, notice=notice_json(event)))
        elif isinstance(event, Done):
            delta = {"audio": {"id": self.audio_id, "expires_at": expiry()}} if self.call.audio_format else {}
            if self.call.include_usage:
                out.append(self.chunk(delta, FINISH_REASONS[event.reason]))
                out.append(self.chunk(None, usage=usage_json(event), stats=stats_json(event)))
            else:  # as OpenAI does: no chunk without choices unless stream_options asks for it
                out.append(self.chunk(delta, FINISH_REASONS[event.reason], stats=stats_json(event)))
        return out


def whole_reply(call: ChatCall, model: str, events: list[Event]) -> tuple[dict, str]:
    """A non-streamed chat completion from all of a reply's events; also the audio id (or "")."""
    chunks = ChatChunks(call, model)
    text, samples, notices, done = [], [], [], None
    for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, AudioChunk):
            samples.append(event.samples)
        elif isinstance(event, Notice):
            notices.append(notice_json(event))
        elif isinstance(event, Done):
            done = event
    message: dict = {"role": "assistant", "content": "".join(text), "refusal": None}
    if call.audio_format:
        audio = np.concatenate(samples) if samples else np.zeros(0, np.int16)
        data = wav_bytes(audio, SPEECH_RATE) if call.audio_format == "wav" else pcm16(audio)
        message["audio"] = {"id": chunks.audio_id, "data": b64(data), "expires_at": expiry(),
                            "transcript": message["content"]}
        message["content"] = None  # as OpenAI: with audio, the text is the transcript
    reply = {
        "id": chunks.id, "object": "chat.completion", "created": chunks.created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH_REASONS[done.reason]}],
        "usage": usage_json(done), "stats": stats_json(done),
    }
    if notices:
        reply["notices"] = notices
    return reply, chunks.audio_id if call.audio_format else ""


def speech_delta(event: AudioChunk) -> dict:
    """A ``speech.audio.delta`` event (base64 16-bit PCM)."""
    return {"type": "speech.audio.delta", "audio": b64(pcm16(event.samples))}


def speech_done(done: Done, characters: int) -> dict:
    """The ``speech.audio.done`` event, with usage (characters in, speech codes out) and our stats."""
    usage = {"input_tokens": characters, "output_tokens": done.stats.codec_codes,
             "total_tokens": characters + done.stats.codec_codes}
    return {"type": "speech.audio.done", "usage": usage, "stats": stats_json(done)}


def expiry() -> int:
    return int(time.time()) + AUDIO_EXPIRY_SECONDS
