"""OpenAI request JSON in, our :class:`~omni_app.api.Request` out (no web framework here).

Chat completions (text, images, audio and videos in; text, or text and speech out),
text-to-speech, and our extension for making voices. Every problem raises
:class:`~.parts.WireError` naming the field, so the server can answer with OpenAI's error
shape and a message a person can act on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..api import Request
from ..config import GenerationLimits, MediaLimits
from ..conversation import SPEECH_SYSTEM_PROMPT, Conversation, TextPart, Turn
from ..errors import OmniError
from ..media import load_audio
from .parts import WireError, audio_bytes, text_of, user_parts

#: Output audio formats of chat completions; ``pcm`` is vLLM's name for ``pcm16``.
CHAT_FORMATS = {"pcm16": "pcm16", "pcm": "pcm16", "wav": "wav"}
SPEECH_FORMATS = ("wav", "pcm")
MAX_SEED = 2**63 - 1
MAX_SESSION_CHARS = 256


@dataclass(frozen=True)
class ChatCall:
    """A chat completion to run."""

    request: Request
    stream: bool
    #: ``pcm16`` or ``wav``; ``None`` for a text-only reply.
    audio_format: str | None
    #: ``stream_options.include_usage``: a last chunk with no choices carries the usage.
    include_usage: bool = False


@dataclass(frozen=True)
class SpeechCall:
    """A text-to-speech request to run."""

    request: Request
    #: ``wav`` (a header, then the samples) or ``pcm`` (16-bit samples only).
    audio_format: str
    #: ``True``: server-sent events (``speech.audio.delta`` / ``speech.audio.done``).
    sse: bool


@dataclass(frozen=True)
class VoiceCall:
    """Our extension: make a voice from a reference recording."""

    name: str
    reference_16k: np.ndarray
    base: str
    save: bool


def parse_chat(body: dict, limits: GenerationLimits, media: MediaLimits, default_voice: str,
               transcript: Callable[[str], str | None] = lambda _id: None) -> ChatCall:
    """A chat completion request. ``limits`` caps the lengths a client may ask for;
    ``transcript`` finds the text of an earlier spoken reply by its audio id."""
    _refuse_unsupported(body)
    modalities = body.get("modalities") or ["text"]
    if not isinstance(modalities, list) or not set(modalities) <= {"text", "audio"}:
        raise WireError("modalities must be [\"text\"] or [\"text\", \"audio\"].", "modalities")
    stream = _flag(body, "stream")
    voice, audio_format = None, None
    if "audio" in modalities:
        audio = body.get("audio") or {}
        if not isinstance(audio, dict):
            raise WireError("audio must be an object with 'voice' and 'format'.", "audio")
        voice = _voice(audio.get("voice"), "audio.voice") or default_voice
        requested = audio.get("format") or ("pcm16" if stream else "wav")
        if requested not in CHAT_FORMATS:
            raise WireError(f"audio.format {requested!r} is not supported; use pcm16 or wav.", "audio.format",
                            "unsupported_format")
        audio_format = CHAT_FORMATS[requested]
    conversation = _conversation(body.get("messages"), media, transcript)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    request = Request(
        conversation, voice=voice, limits=_limits(body, max_tokens, limits), seed=_seed(body),
        speech_sampling=_flag(body, "speech_sampling", True), session=_session(body),
    )
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise WireError("stream_options must be an object.", "stream_options")
    return ChatCall(request, stream, audio_format, include_usage=_flag(options, "include_usage"))


def parse_speech(body: dict, limits: GenerationLimits, default_voice: str) -> SpeechCall:
    """An ``/v1/audio/speech`` request: exactly ``input``, spoken."""
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise WireError("input must be the text to speak.", "input")
    audio_format = body.get("response_format") or "wav"
    if audio_format not in SPEECH_FORMATS:
        raise WireError(f"response_format {audio_format!r} is not supported; use wav or pcm.", "response_format",
                        "unsupported_format")
    stream_format = body.get("stream_format") or "audio"
    if stream_format not in ("audio", "sse"):
        raise WireError("stream_format must be audio or sse.", "stream_format")
    if body.get("speed") not in (None, 1, 1.0):
        raise WireError("speed can't be changed: the model speaks at its own pace.", "speed", "unsupported")
    if body.get("instructions"):
        raise WireError("instructions are not supported: Qwen2.5-Omni's speech has no style control.",
                        "instructions", "unsupported")
    voice = _voice(body.get("voice"), "voice") or default_voice
    request = Request(voice=voice, limits=_limits(body, None, limits), seed=_seed(body), speak_text=text,
                      speech_sampling=_flag(body, "speech_sampling", True))
    return SpeechCall(request, audio_format, stream_format == "sse")


def parse_voice(body: dict, media: MediaLimits, default_base: str) -> VoiceCall:
    """``{"name", "base", "audio": data URL or {"data", "format"}, "save"}``: a voice to make."""
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise WireError("name must name the new voice.", "name")
    base = body.get("base") or default_base
    if not isinstance(base, str):
        raise WireError("base must name a stock voice.", "base")
    try:
        reference = load_audio(audio_bytes(body.get("audio"), "audio"), media)
    except WireError:
        raise
    except OmniError as exc:
        raise WireError(f"audio: {exc}", "audio", "invalid_media") from exc
    return VoiceCall(name.strip(), reference, base, _flag(body, "save"))


def _conversation(messages, media: MediaLimits, transcript) -> Conversation:
    if not isinstance(messages, list) or not messages:
        raise WireError("messages must be a non-empty list.", "messages")
    system: list[str] = []
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise WireError(f"{where} must be an object with a role.", where)
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.append(text_of(content, f"{where}.content"))
        elif role == "user":
            turns.append(Turn("user", user_parts(content, f"{where}.content", media)))
        elif role == "assistant":
            text = text_of(content, f"{where}.content")
            if not text:
                text = _spoken_text(message.get("audio"), where, transcript)
            turns.append(Turn("assistant", (TextPart(text),)))
        else:
            raise WireError(f"{where}.role {role!r} is not supported; use system, user or assistant.",
                            f"{where}.role")
    if not turns or turns[-1].role != "user":
        raise WireError("The last message must be the user's.", "messages")
    prompt = "\n".join(s for s in system if s.strip()) or SPEECH_SYSTEM_PROMPT
    return Conversation(turns=tuple(turns), system_prompt=prompt)


def _spoken_text(audio, where: str, transcript) -> str:
    """An earlier spoken reply referred to by ``{"audio": {"id": ...}}``, as its text."""
    audio_id = audio.get("id") if isinstance(audio, dict) else None
    if not isinstance(audio_id, str):
        raise WireError(f"{where} has no content.", f"{where}.content")
    text = transcript(audio_id)
    if text is None:
        raise WireError(f"{where}.audio.id {audio_id!r} is unknown here (the server keeps the text of recent replies "
                        "only); send the assistant's text as content instead.", f"{where}.audio.id")
    return text


def _refuse_unsupported(body: dict) -> None:
    if body.get("n") not in (None, 1):
        raise WireError("n must be 1: one reply per request.", "n", "unsupported")
    if body.get("tools") or body.get("functions"):
        raise WireError("tools are not supported by this server.", "tools", "unsupported")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise WireError("response_format must be text: structured output is not supported.", "response_format",
                        "unsupported")


def _voice(value, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value.strip():
        raise WireError(f"{where} must be a voice name or {{\"id\": ...}}.", where)
    return value.strip()


def _limits(body: dict, max_tokens, caps: GenerationLimits) -> GenerationLimits:
    """The request's lengths, clamped to the server's: a client can ask for less, not more."""
    tokens, seconds = caps.max_new_tokens, caps.max_speech_seconds
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise WireError("max_tokens must be a positive integer.", "max_tokens")
        tokens = min(tokens, max_tokens)
    speech = body.get("max_speech_seconds")
    if speech is not None:
        if isinstance(speech, bool) or not isinstance(speech, (int, float)) or not speech > 0:
            raise WireError("max_speech_seconds must be a positive number.", "max_speech_seconds")
        seconds = min(seconds, float(speech))
    return GenerationLimits(max_new_tokens=tokens, max_speech_seconds=seconds)


def _seed(body: dict) -> int | None:
    seed = body.get("seed")
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise WireError(f"seed must be an integer from 0 to {MAX_SEED}.", "seed")
    return seed


def _session(body: dict) -> str | None:
    session = body.get("session", body.get("user"))
    if session is None:
        return None
    if not isinstance(session, str) or len(session) > MAX_SESSION_CHARS:
        raise WireError(f"session must be a string of at most {MAX_SESSION_CHARS} characters.", "session")
    return session or None


def _flag(body: dict, key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise WireError(f"{key} must be true or false.", key)
    return value
