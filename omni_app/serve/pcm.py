"""Speech as bytes: raw 16-bit PCM, WAV files and WAV headers for streams of unknown length."""

from __future__ import annotations

import base64
import io
import struct

import numpy as np

from ..config import SPEECH_SAMPLE_RATE

#: Qwen2.5-Omni speaks at 24 kHz; OpenAI's streamed ``pcm16`` is 24 kHz mono too.
SPEECH_RATE = SPEECH_SAMPLE_RATE
#: The largest size field a RIFF header holds: "unknown length" for a streamed WAV.
OPEN_LENGTH = 0xFFFFFFFF


def pcm16(samples: np.ndarray) -> bytes:
    """Mono int16 samples as little-endian bytes."""
    return np.asarray(samples, dtype="<i2").tobytes()


def from_pcm16(data: bytes) -> np.ndarray:
    """Little-endian 16-bit bytes (an even count) back to int16 samples."""
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def wav_header(sample_rate: int = SPEECH_RATE, data_bytes: int | None = None) -> bytes:
    """The 44-byte header of a mono 16-bit WAV; ``None`` leaves the length open (streaming).

    Players and decoders (ffmpeg, soundfile, browsers) read an open-length WAV to the end
    of the stream.
    """
    data_size = OPEN_LENGTH if data_bytes is None else data_bytes
    riff_size = OPEN_LENGTH if data_bytes is None else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_size))


def wav_bytes(samples: np.ndarray, sample_rate: int = SPEECH_RATE) -> bytes:
    """A complete mono 16-bit WAV file."""
    data = pcm16(samples)
    return wav_header(sample_rate, len(data)) + data


def float_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """A 32-bit float WAV: audio goes to the server without rounding."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(samples, np.float32), sample_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_url(mime: str, data: bytes) -> str:
    """``data:<mime>;base64,...``: media travels inside the request, never as a link."""
    return f"data:{mime};base64,{b64(data)}"
