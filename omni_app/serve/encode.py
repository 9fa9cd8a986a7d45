"""A conversation as OpenAI chat messages, media inline, for a remote server.

Nothing is lost on the way to our own server: images go as PNG, audio as 32-bit float
WAV at 16 kHz, and videos (frames already at 2 fps, within the pixel budget) as
Matroska with lossless FFV1 frames and float PCM sound, which the server decodes back to
the same frames and samples. vLLM-Omni gets what it decodes best: H.264/AAC MP4 (lossy)
and audio as an ``audio_url``.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

from ..conversation import AudioPart, Conversation, ImagePart, Part, TextPart, VideoPart
from ..media import MODEL_SAMPLE_RATE, VideoClip
from .pcm import b64, data_url, float_wav

OPENAI, VLLM_OMNI = "openai", "vllm-omni"


def messages(conversation: Conversation, dialect: str) -> list[dict]:
    """The system prompt and every turn; earlier replies go back as their text."""
    out: list[dict] = [{"role": "system", "content": conversation.system_prompt}]
    for turn in conversation.turns:
        if turn.role == "assistant":
            out.append({"role": "assistant", "content": turn.text})
        else:
            out.append({"role": "user", "content": [part_json(p, dialect) for p in turn.parts]})
    return out


def has_video_sound(conversation: Conversation) -> bool:
    return any(isinstance(p, VideoPart) and p.clip.audio is not None for t in conversation.turns for p in t.parts)


def part_json(part: Part, dialect: str) -> dict:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        return {"type": "image_url", "image_url": {"url": data_url("image/png", png(part.image))}}
    if isinstance(part, AudioPart):
        wav = float_wav(part.samples, MODEL_SAMPLE_RATE)
        if dialect == VLLM_OMNI:
            return {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", wav)}}
        return {"type": "input_audio", "input_audio": {"data": b64(wav), "format": "wav"}}
    if isinstance(part, VideoPart):
        if dialect == VLLM_OMNI:
            return {"type": "video_url", "video_url": {"url": data_url("video/mp4", video_file(part.clip, False))}}
        return {"type": "video_url", "video_url": {"url": data_url("video/x-matroska", video_file(part.clip, True))}}
    raise TypeError(f"unknown part {type(part).__name__}")


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def video_file(clip: VideoClip, lossless: bool) -> bytes:
    """The clip as a video file: Matroska FFV1 + float PCM (lossless) or MP4 H.264 + AAC."""
    import av

    rate = Fraction(clip.fps).limit_denominator(1000)
    pix_fmt = "bgr0" if lossless else "yuv420p"
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska" if lossless else "mp4") as out:
        # Clips come from media.frames_to_clip: sides are multiples of 28, as H.264 needs even ones.
        video = out.add_stream("ffv1" if lossless else "libx264", rate=rate)
        video.height, video.width = clip.frames.shape[1:3]
        video.pix_fmt, video.time_base = pix_fmt, 1 / rate
        sound = None
        if clip.audio is not None:
            sound = out.add_stream("pcm_f32le" if lossless else "aac", rate=MODEL_SAMPLE_RATE, layout="mono")
        for index, rgb in enumerate(clip.frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = index, 1 / rate
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            _encode_sound(out, sound, clip.audio, "flt" if lossless else "fltp")
    return buffer.getvalue()


def _encode_sound(out, stream, samples: np.ndarray, sample_format: str) -> None:
    import av

    step = MODEL_SAMPLE_RATE // 10
    for start in range(0, len(samples), step):
        piece = np.ascontiguousarray(samples[start:start + step], dtype=np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(piece, format=sample_format, layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = MODEL_SAMPLE_RATE, start, Fraction(1, MODEL_SAMPLE_RATE)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
