"""Decode and validate user media: audio, images and video (numpy/PIL/PyAV, no gradio).

Everything returns what the model takes: 16 kHz mono float32 audio, RGB PIL images and
video frames sampled at 2 fps within the official pixel budget (the semantics of
``qwen-omni-utils``), with the video's audio track. Problems raise :class:`MediaError`
with a message a person can act on.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

from .config import INPUT_SAMPLE_RATE, MediaLimits
from .errors import MediaError, hidden

log = logging.getLogger(__name__)

MODEL_SAMPLE_RATE = INPUT_SAMPLE_RATE
#: Frames per second the model was trained on; keep it (it matches TMRoPE's time ids).
VIDEO_FPS = 2.0
FRAME_FACTOR = 2  # temporal patch: frames come in pairs
IMAGE_FACTOR = 28  # patch 14 x merge 2
VIDEO_MIN_FRAMES = 4

Source = Union[str, Path, bytes, BinaryIO]


@dataclass(frozen=True)
class VideoClip:
    """Frames ``(T, H, W, 3)`` uint8 sampled at ``fps``, plus the audio track if any."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None = None

    @property
    def seconds(self) -> float:
        """Duration covered by the frames."""
        return len(self.frames) / self.fps


def _name(source: Source) -> str:
    return Path(source).name if isinstance(source, (str, Path)) else "the upload"  # for messages


def _unusable(message: str, exc: Exception) -> MediaError:
    # The decoder's own words (and the server's path of an upload) go to the log only.
    return hidden(MediaError, message, exc, log)


def _open_container(source: Source):
    import av

    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise MediaError(f"{_name(source)} was not found: check its name, or upload it again.")
        if Path(source).stat().st_size == 0:
            raise MediaError(f"{_name(source)} is empty.")
        target = str(source)
    else:
        target = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return av.open(target)
    except Exception as exc:  # PyAV raises many types for unreadable input
        raise _unusable(f"{_name(source)} is not a readable audio or video file: it may be corrupt, cut short, "
                        "or another kind of file under that name.", exc) from exc


def _decode_audio_stream(container, stream, name: str, max_seconds: float) -> np.ndarray:
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=MODEL_SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    total = 0
    limit = int((max_seconds + 1.0) * MODEL_SAMPLE_RATE)
    try:
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray().reshape(-1))
                total += pieces[-1].size
            if total > limit:
                raise MediaError(f"{name} is longer than the {max_seconds:g} s limit; trim it and try again.")
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray().reshape(-1))
    except MediaError:
        raise
    except Exception as exc:
        raise _unusable(f"{name} could not be decoded: the file may be corrupt or cut short.", exc) from exc
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)


def load_audio(source: Source, limits: MediaLimits = MediaLimits()) -> np.ndarray:
    """Decode any common audio file (wav, flac, mp3, ogg, webm/opus, m4a) to 16 kHz mono."""
    name = _name(source)
    with _open_container(source) as container:
        if not container.streams.audio:
            raise MediaError(f"{name} has no audio track.")
        audio = _decode_audio_stream(container, container.streams.audio[0], name, limits.max_audio_seconds)
    return check_audio(audio, name, limits)


def audio_from_array(samples: np.ndarray, sample_rate: int, limits: MediaLimits = MediaLimits(),
                     name: str = "The recording") -> np.ndarray:
    """Convert a recorded array (int or float, mono or (n, channels)) to 16 kHz mono float32."""
    data = np.asarray(samples)
    if data.size == 0:
        raise MediaError(f"{name} is empty.")
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    data = data.astype(np.float32)
    if data.ndim == 2:
        # Gradio gives (samples, channels); a (channels, samples) array has few rows.
        data = data.mean(axis=1) if data.shape[0] > data.shape[1] else data.mean(axis=0)
    if sample_rate <= 0:
        raise MediaError(f"{name} has an invalid sample rate ({sample_rate}).")
    if len(data) / sample_rate > limits.max_audio_seconds + 1.0:
        raise MediaError(f"{name} is longer than the {limits.max_audio_seconds:g} s limit.")
    if sample_rate != MODEL_SAMPLE_RATE:
        import librosa

        data = librosa.resample(data, orig_sr=sample_rate, target_sr=MODEL_SAMPLE_RATE)
    return check_audio(data.astype(np.float32), name, limits)


def check_audio(audio: np.ndarray, name: str, limits: MediaLimits) -> np.ndarray:
    """Reject empty, silent, too short or too long 16 kHz audio."""
    seconds = len(audio) / MODEL_SAMPLE_RATE
    if len(audio) == 0:
        raise MediaError(f"{name} contains no audio.")
    if seconds < limits.min_audio_seconds:
        raise MediaError(f"{name} is too short ({seconds:.2f} s); record at least {limits.min_audio_seconds:g} s.")
    if seconds > limits.max_audio_seconds:
        raise MediaError(f"{name} is {seconds:.0f} s long; the limit is {limits.max_audio_seconds:g} s.")
    if not np.isfinite(audio).all():
        raise MediaError(f"{name} contains invalid samples.")
    if float(np.abs(audio).max()) < limits.silence_peak:
        raise MediaError(f"{name} is silent; check the microphone or the file.")
    return np.clip(audio, -1.0, 1.0)


def load_image(source: Union[Source, "PIL.Image.Image"], limits: MediaLimits = MediaLimits()):  # noqa: F821
    """Open an image (any PIL format), apply its EXIF rotation and convert to RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, Image.Image):
        image, name = source, "The image"
    else:
        name = _name(source)
        if isinstance(source, (str, Path)) and not Path(source).is_file():
            raise MediaError(f"{_name(source)} was not found: check its name, or upload it again.")
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except (UnidentifiedImageError, OSError) as exc:
            raise _unusable(f"{name} is not a readable image: it may be corrupt, or not an image "
                            "(PNG, JPEG, WebP, GIF, BMP).", exc) from exc
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise MediaError(
            f"{name} is {width}x{height} pixels; the limit is {limits.max_image_pixels / 1e6:.0f} megapixels."
        )
    if min(width, height) < 4:
        raise MediaError(f"{name} is too small ({width}x{height}).")
    try:
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except OSError as exc:
        raise _unusable(f"{name} is cut short or corrupt.", exc) from exc


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int,
                 factor: int = IMAGE_FACTOR) -> tuple[int, int]:
    """Nearest size with sides divisible by ``factor`` and area within the pixel budget."""
    if max(height, width) / min(height, width) > 200:
        raise MediaError("The video's aspect ratio is too extreme (more than 200:1).")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def video_frame_pixels(n_frames: int, limits: MediaLimits) -> int:
    """Per-frame pixel cap: the total budget shared by all frames, within min/max."""
    per_frame = min(limits.video_max_pixels, limits.video_total_pixels / n_frames * FRAME_FACTOR)
    return int(max(per_frame, limits.video_min_pixels * 1.05))


def load_video(source: Source, limits: MediaLimits = MediaLimits(), with_audio: bool = True) -> VideoClip:
    """Decode a video file to frames at exactly 2 fps (at least 4, an even count) plus audio.

    Only the sampled frames are kept, downscaled as soon as decoded (memory stays near their size).
    """
    name = _name(source)
    with _open_container(source) as container:
        if not container.streams.video:
            raise MediaError(f"{name} has no video track.")
        stream = container.streams.video[0]
        sampler = FrameSampler(limits)
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                if frame.time > limits.max_video_seconds + 0.5:
                    raise MediaError(f"{name} is longer than the {limits.max_video_seconds:g} s video limit.")
                sampler.add(float(frame.time), frame)
        except MediaError:
            raise
        except Exception as exc:
            raise _unusable(f"{name} could not be decoded: the file may be corrupt or cut short.", exc) from exc
        audio = None
        if with_audio and container.streams.audio:
            container.seek(0)
            audio = _decode_audio_stream(container, container.streams.audio[0], name, limits.max_video_seconds)
            if audio.size == 0 or float(np.abs(audio).max()) < limits.silence_peak:
                audio = None  # a silent track carries nothing; treat the video as mute
    if not sampler.times:
        raise MediaError(f"{name} contains no video frames.")
    return sampler.clip(audio)


class FrameSampler:
    """Keeps, of frames arriving in time order, only the nearest to each 2 fps instant (earlier on a tie).

    A picked frame is downscaled at once to the largest size any frame count allows;
    :meth:`clip` resizes again only if the final count makes the pixel budget smaller.
    """

    def __init__(self, limits: MediaLimits) -> None:
        self.limits = limits
        self.times: list[float] = []
        self.picked: list[np.ndarray] = []  # one per 2 fps instant so far
        self._previous = None  # (time, frame) of the latest frame, not converted yet
        self._converted = self.native = None  # (frame, its small copy); (height, width)

    def add(self, time: float, frame) -> None:
        """One decoded frame (a PyAV ``VideoFrame`` or an RGB array) at ``time`` seconds."""
        start = self.times[0] if self.times else time
        self.times.append(time)
        time -= start
        if self._previous is not None and time <= self._previous[0]:
            return  # a repeated or earlier timestamp: the first frame at a time wins
        while len(self.picked) / VIDEO_FPS <= time:
            target = len(self.picked) / VIDEO_FPS
            keep = self._previous is not None and target - self._previous[0] <= time - target
            self.picked.append(self._small(self._previous[1] if keep else frame))
        self._previous = (time, frame)

    def clip(self, audio: np.ndarray | None = None) -> VideoClip:
        """The sampled clip: an even count of frames (at least 4) within the pixel budget."""
        count = _frame_count(np.array(self.times) - self.times[0], self.limits)
        while len(self.picked) < count:  # instants after the last frame: it is the nearest
            self.picked.append(self._small(self._previous[1]))
        h, w = smart_resize(*self.native, self.limits.video_min_pixels, video_frame_pixels(count, self.limits))
        frames = [_resized(f, h, w) for f in self.picked[:count]]
        return VideoClip(frames=np.stack(frames), fps=VIDEO_FPS, audio=audio)

    def _small(self, frame) -> np.ndarray:
        if self._converted is not None and self._converted[0] is frame:
            return self._converted[1]  # a low frame rate: one frame nearest to several instants
        rgb = frame if isinstance(frame, np.ndarray) else frame.to_ndarray(format="rgb24")
        self.native = self.native or rgb.shape[:2]
        largest = video_frame_pixels(VIDEO_MIN_FRAMES, self.limits)
        small = _resized(rgb, *smart_resize(*self.native, self.limits.video_min_pixels, largest))
        self._converted = (frame, small)
        return small


def _frame_count(times: np.ndarray, limits: MediaLimits) -> int:
    duration = float(times[-1]) + (float(np.median(np.diff(times))) if len(times) > 1 else 0.5)
    if duration > limits.max_video_seconds + 0.5:
        raise MediaError(f"The video is longer than the {limits.max_video_seconds:g} s video limit.")
    return max(VIDEO_MIN_FRAMES, int(duration * VIDEO_FPS) // FRAME_FACTOR * FRAME_FACTOR)


def _resized(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    same = frame.shape[:2] == (height, width)
    return frame if same else np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC))


def frames_to_clip(frames: list[np.ndarray], times: np.ndarray, limits: MediaLimits,
                   audio: np.ndarray | None = None) -> VideoClip:
    """Resample timestamped RGB frames (a webcam's, in time order) to 2 fps within the pixel budget,
    as a video file's are (:class:`FrameSampler`)."""
    sampler = FrameSampler(limits)
    for time, frame in zip(times, frames, strict=True):
        sampler.add(float(time), frame)
    return sampler.clip(audio)
