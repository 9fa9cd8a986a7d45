"""The content of a message in OpenAI's JSON, decoded into our conversation parts.

Media must travel inside the request (``data:`` URLs or base64 fields): a URL that
points anywhere else is refused and never fetched, so a client can't make the server
reach hosts or files on its behalf. Decoding applies the same media limits as the app.
"""

from __future__ import annotations

import base64
import binascii
import logging

from ..config import MediaLimits
from ..conversation import AudioPart, ImagePart, Part, TextPart, VideoPart
from ..errors import MediaError, OmniError, RequestError, hidden
from ..media import load_audio, load_image, load_video

log = logging.getLogger(__name__)


class WireError(RequestError):
    """A request the server can't accept, with where in it the problem is (OpenAI's ``param``)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


#: What each kind of part is called in OpenAI's JSON and where its URL sits.
URL_PARTS = {"image_url": "image", "audio_url": "audio", "video_url": "video"}


def text_of(content, where: str) -> str:
    """The text of a system or assistant message (a string, or a list of text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise WireError(f"{where} must be a string or a list of parts.", where)
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind != "refusal":
            raise WireError(f"{where}[{index}]: only text parts are accepted in this message.", f"{where}[{index}]")
    return "".join(texts)


def user_parts(content, where: str, limits: MediaLimits) -> tuple[Part, ...]:
    """A user message's content as parts: text, images, audio and videos, decoded and checked."""
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise WireError(f"{where} must be a string or a list of parts.", where)
    parts: list[Part] = []
    for index, part in enumerate(content):
        here = f"{where}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise WireError(f"{here} must be an object with a 'type'.", here)
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise WireError(f"{here}.text must be a string.", f"{here}.text")
            if part["text"].strip():
                parts.append(TextPart(part["text"]))
        elif kind == "input_audio":
            data = _input_audio(part.get("input_audio"), f"{here}.input_audio")
            parts.append(AudioPart(_decode("audio", data, here, limits)))
        elif kind in URL_PARTS:
            media = URL_PARTS[kind]
            data = _data_url(_url_of(part.get(kind), f"{here}.{kind}"), f"{here}.{kind}.url")
            decoded = _decode(media, data, here, limits)
            parts.append(AudioPart(decoded) if media == "audio" else
                         ImagePart(decoded) if media == "image" else VideoPart(decoded))
        else:
            raise WireError(f"{here}: parts of type {kind!r} are not supported; use text, image_url, input_audio, "
                            "audio_url or video_url.", f"{here}.type", "unsupported_part")
    if not parts:
        raise WireError(f"{where} is empty: send text, audio, an image or a video.", where)
    return tuple(parts)


def image_from_data_url(url: str, where: str, limits: MediaLimits):
    """An image sent as a ``data:`` URL, decoded and checked."""
    if not isinstance(url, str):
        raise WireError(f"{where} must be a data: URL.", where)
    return _decode("image", _data_url(url, where), where, limits)


def audio_bytes(value, where: str) -> bytes:
    """Audio given as a ``data:`` URL, or as ``{"data": base64, "format": ...}``."""
    if isinstance(value, str):
        return _data_url(value, where)
    return _input_audio(value, where)


def _input_audio(value, where: str) -> bytes:
    if not isinstance(value, dict) or not isinstance(value.get("data"), str):
        raise WireError(f"{where} must be an object with base64 'data' (and a 'format' such as wav or mp3).", where)
    data = value["data"]
    # Some clients send a data: URL here; the bytes are what counts.
    return _data_url(data, f"{where}.data") if data.startswith("data:") else _base64(data, f"{where}.data")


def _url_of(value, where: str) -> str:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise WireError(f"{where} must be an object with a 'url'.", where)
    return url


def _data_url(url: str, where: str) -> bytes:
    if not url.startswith("data:"):
        what = f"{url.split(':', 1)[0]} URLs" if ":" in url else "paths"
        raise WireError(
            f"{where}: only data: URLs are accepted (the media itself, base64-encoded, e.g. "
            f"data:image/png;base64,...); this server never fetches {what}.", where, "invalid_url")
    header, comma, payload = url[5:].partition(",")
    if not comma or header.split(";")[-1] != "base64":
        raise WireError(f"{where}: the data: URL must be base64-encoded (data:<type>;base64,<data>).", where,
                        "invalid_url")
    return _base64(payload, where)


def _base64(text: str, where: str) -> bytes:
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"{where} is not valid base64.", where, "invalid_base64") from exc
    if not data:
        raise WireError(f"{where} is empty.", where)
    return data


def _decode(media: str, data: bytes, where: str, limits: MediaLimits):
    try:
        if media == "audio":
            return load_audio(data, limits)
        if media == "image":
            return load_image(data, limits)
        return load_video(data, limits)
    except OmniError as exc:
        raise WireError(f"{where} ({media}): {exc}", where, "invalid_media") from exc
    except Exception as exc:  # decoders raise many kinds of errors on hostile input
        message = str(hidden(MediaError, f"{where} ({media}) could not be decoded: the data may be corrupt, cut short, "
                                         f"or not {media}.", exc, log))
        raise WireError(message, where, "invalid_media") from exc
