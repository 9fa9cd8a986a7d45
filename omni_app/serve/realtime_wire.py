"""The Realtime API's wire format: the session a client configures, and the server's events.

Names and shapes are those of OpenAI's Realtime API (GA), as the ``openai`` package types
them in ``openai/types/realtime/``. Audio is 16-bit PCM, 24 kHz, mono, base64, both ways.
What we don't do (tools, other audio formats, transcription of the input) is refused with an
``error`` event that names the field.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import time
import uuid
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..config import CODES_PER_SECOND, DEFAULT_VOICE, SPEECH_SAMPLE_RATE, GenerationLimits, MediaLimits
from ..conversation import AudioPart, ImagePart, TextPart
from ..events import Done
from ..media import audio_from_array
from ..vad import MIN_SILENCE_RANGE
from .parts import WireError, image_from_data_url

#: The only audio format, in and out.
PCM = {"type": "audio/pcm", "rate": SPEECH_SAMPLE_RATE}
#: Session fields a client may send that we don't act on, but accept (what they ask is what we do anyway).
ACCEPTED_AS_IS = {"type", "model", "object", "id", "expires_at", "include", "tracing", "prompt", "truncation"}


@dataclass(frozen=True)
class TurnDetection:
    """``server_vad``: the server hears when a turn starts and ends."""

    silence_duration_ms: int = 600
    create_response: bool = True
    interrupt_response: bool = True
    prefix_padding_ms: int = 300
    threshold: float = 0.5


@dataclass(frozen=True)
class RealtimeConfig:
    """One connection's session, as ``session.update`` leaves it."""

    voice: str = DEFAULT_VOICE
    instructions: str = ""
    #: ``["audio"]`` (speech, with its transcript) or ``["text"]``.
    output_modalities: tuple[str, ...] = ("audio",)
    #: ``None``: the client commits the input buffer itself.
    turn_detection: TurnDetection | None = TurnDetection()
    #: Text tokens, and speech codes, a reply may make (``None``: the server's limits).
    max_output_tokens: int | None = None

    def limits(self, server: GenerationLimits) -> GenerationLimits:
        """The server's limits, within this session's (speech: 50 codes a second)."""
        if self.max_output_tokens is None:
            return server
        return GenerationLimits(min(server.max_new_tokens, self.max_output_tokens),
                                min(server.max_speech_seconds, max(0.1, self.max_output_tokens / CODES_PER_SECOND)))

    @property
    def speaks(self) -> bool:
        return "audio" in self.output_modalities

    def as_json(self, session_id: str, model: str) -> dict:
        """The session as ``session.created``/``session.updated`` carry it."""
        detection = None if self.turn_detection is None else {"type": "server_vad", **asdict(self.turn_detection)}
        return {"type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
                "output_modalities": list(self.output_modalities), "instructions": self.instructions,
                "audio": {"input": {"format": PCM, "turn_detection": detection, "transcription": None,
                                    "noise_reduction": None},
                          "output": {"format": PCM, "voice": self.voice, "speed": 1.0}},
                "tools": [], "tool_choice": "auto",
                "max_output_tokens": "inf" if self.max_output_tokens is None else self.max_output_tokens}


class ClientTooSlow(Exception):
    """The client stopped taking events."""


def _get(obj, key: str, where: str, kind):
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise WireError(f"{where}.{key} has the wrong type.", f"{where}.{key}")
    return value


def _format(value, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") != "audio/pcm" or value.get("rate", SPEECH_SAMPLE_RATE) != \
            SPEECH_SAMPLE_RATE:
        raise WireError(f"{where}: only {{'type': 'audio/pcm', 'rate': {SPEECH_SAMPLE_RATE}}} (16-bit PCM, mono) "
                        "is supported.", where, "unsupported_audio_format")


def _detection(value, where: str, current: TurnDetection | None) -> TurnDetection | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") != "server_vad":
        raise WireError(f"{where}: only turn detection of type 'server_vad' (or null) is supported.", where,
                        "unsupported_turn_detection")
    base = current or TurnDetection()
    changes = {}
    for name, kind in (("silence_duration_ms", int), ("prefix_padding_ms", int), ("threshold", (int, float)),
                       ("create_response", bool), ("interrupt_response", bool)):
        if value.get(name) is not None:
            if not isinstance(value[name], kind) or (kind is int and isinstance(value[name], bool)):
                raise WireError(f"{where}.{name} has the wrong type.", f"{where}.{name}")
            changes[name] = value[name]
    low, high = MIN_SILENCE_RANGE
    if not low <= changes.get("silence_duration_ms", base.silence_duration_ms) <= high:
        raise WireError(f"{where}.silence_duration_ms must be between {low} and {high}.",
                        f"{where}.silence_duration_ms")
    if not 0 < changes.get("threshold", base.threshold) < 1:
        raise WireError(f"{where}.threshold must be between 0 and 1.", f"{where}.threshold")
    return replace(base, **changes)


def output_tokens(value, where: str) -> int | None:
    """``max_output_tokens``: a whole number from 1, or ``"inf"``."""
    if value == "inf":
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise WireError(f"{where} must be a whole number from 1, or 'inf'.", where)
    return value


def updated(config: RealtimeConfig, session, voices: list[str]) -> RealtimeConfig:
    """``config`` with what a ``session.update`` asks; :class:`WireError` names the first field refused."""
    if not isinstance(session, dict):
        raise WireError("session must be an object.", "session")
    for key in session:
        if key in ("tools",) and session[key]:
            raise WireError("session.tools: tools are not supported by this server.", "session.tools",
                            "unsupported_field")
        if key not in ACCEPTED_AS_IS | {"voice", "instructions", "output_modalities", "audio", "tools",
                                        "tool_choice", "temperature", "max_output_tokens"}:
            raise WireError(f"session.{key} is not supported by this server.", f"session.{key}", "unsupported_field")
    changes: dict = {}
    if "max_output_tokens" in session:
        changes["max_output_tokens"] = output_tokens(session["max_output_tokens"], "session.max_output_tokens")
    if (instructions := _get(session, "instructions", "session", str)) is not None:
        changes["instructions"] = instructions
    if (modalities := _get(session, "output_modalities", "session", list)) is not None:
        if modalities not in (["audio"], ["text"]):
            raise WireError("session.output_modalities must be ['audio'] or ['text'].", "session.output_modalities")
        changes["output_modalities"] = tuple(modalities)
    audio = _get(session, "audio", "session", dict) or {}
    for key in audio:
        if key not in ("input", "output"):
            raise WireError(f"session.audio.{key} is not supported.", f"session.audio.{key}", "unsupported_field")
    given = _get(audio, "input", "session.audio", dict) or {}
    for key in given:
        if key not in ("format", "turn_detection", "transcription", "noise_reduction"):
            raise WireError(f"session.audio.input.{key} is not supported.", f"session.audio.input.{key}",
                            "unsupported_field")
        if key in ("transcription", "noise_reduction") and given[key] is not None:
            raise WireError(f"session.audio.input.{key} is not supported by this server.",
                            f"session.audio.input.{key}", "unsupported_field")
    _format(given.get("format"), "session.audio.input.format")
    if "turn_detection" in given:
        changes["turn_detection"] = _detection(given["turn_detection"], "session.audio.input.turn_detection",
                                               config.turn_detection)
    out = _get(audio, "output", "session.audio", dict) or {}
    _format(out.get("format"), "session.audio.output.format")
    voice = _get(out, "voice", "session.audio.output", str) or _get(session, "voice", "session", str)
    if voice is not None:
        if voice not in voices:
            raise WireError(f"session.audio.output.voice: {voice!r} is not a voice here; choose one of "
                            f"{', '.join(voices)}.", "session.audio.output.voice", "invalid_voice")
        changes["voice"] = voice
    return replace(config, **changes)


def item_parts(role: str, content: list, media: MediaLimits) -> tuple:
    """A ``conversation.item.create`` message's parts, decoded and checked."""
    parts = []
    for index, part in enumerate(content):
        where = f"item.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "text", "output_text") and isinstance(part.get("text"), str):
            parts.append(TextPart(part["text"]))
        elif role == "user" and kind == "input_audio" and isinstance(part.get("audio"), str):
            try:
                data = base64.b64decode(part["audio"], validate=True)
            except (binascii.Error, ValueError):
                raise WireError(f"{where}.audio is not valid base64.", f"{where}.audio") from None
            samples = np.frombuffer(data[: len(data) // 2 * 2], "<i2")
            parts.append(AudioPart(audio_from_array(samples, SPEECH_SAMPLE_RATE, media,
                                                    "The item's audio")))
        elif role == "user" and kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append(ImagePart(image_from_data_url(part["image_url"], f"{where}.image_url",
                                                       media)))
        else:
            raise WireError(f"{where}: a {role} item's parts are input_text, input_audio (base64 PCM at "
                            "24 kHz) or input_image (a data: URL).", f"{where}.type", "unsupported_part")
    if not any(not isinstance(p, TextPart) or p.text.strip() for p in parts):
        raise WireError("item.content is empty.", "item.content")
    return tuple(parts)


def heard_share(text: str, fraction: float) -> str:
    """What a listener heard of a reply whose speech was played up to ``fraction``: that share of
    its text, by characters (Chinese has no spaces), without a half word where there are words."""
    cut = round(len(text) * max(0.0, min(1.0, fraction)))
    head = text[:cut]
    if cut < len(text) and not text[cut].isspace() and " " in head.strip():
        head = head[: head.rstrip().rfind(" ")]
    return head.rstrip()


class Ids:
    """Event and item ids, unique within the server."""

    def __init__(self) -> None:
        self._count = itertools.count(1)

    def __call__(self, prefix: str) -> str:
        return f"{prefix}_{uuid.uuid4().hex[:12]}{next(self._count)}"


def error_event(event_id: str, message: str, param: str | None = None, code: str | None = None,
                client_event: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"type": "error", "event_id": event_id,
            "error": {"type": kind, "code": code, "message": message, "param": param, "event_id": client_event}}


def message_item(item_id: str, role: str, content: list[dict], status: str = "completed") -> dict:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": role, "status": status,
            "content": content}


def response_json(response_id: str, status: str, output: list[dict], config: RealtimeConfig,
                  done: Done | None = None, reason: str | None = None) -> dict:
    """A response object, as ``response.created``/``response.done`` carry it."""
    usage = None
    if done is not None:
        s = done.stats
        prompt = int(s.extra.get("prompt_tokens", 0))
        usage = {"total_tokens": prompt + s.text_tokens + s.codec_codes, "input_tokens": prompt,
                 "output_tokens": s.text_tokens + s.codec_codes,
                 "input_token_details": {"text_tokens": prompt, "audio_tokens": 0, "cached_tokens":
                                         int(s.extra.get("reused_tokens", 0))},
                 "output_token_details": {"text_tokens": s.text_tokens, "audio_tokens": s.codec_codes}}
    details = None if reason is None else {"type": status, "reason": reason}
    return {"id": response_id, "object": "realtime.response", "status": status, "status_details": details,
            "output": output, "conversation_id": None, "output_modalities": list(config.output_modalities),
            "audio": {"output": {"format": PCM, "voice": config.voice}}, "usage": usage,
            "metadata": None, "max_output_tokens": "inf", "created_at": int(time.time())}
