"""Decoding and validating user media with real files made at test time."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from omni_app.config import MediaLimits
from omni_app.errors import MediaError
from omni_app.media import (
    MODEL_SAMPLE_RATE,
    audio_from_array,
    load_audio,
    load_image,
    load_video,
    smart_resize,
)


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "ogg", "webm", "m4a"])
def test_audio_formats_decode_to_16k_mono(media_dir, ext):
    reference = sf.info(str(media_dir / "speech.wav")).duration
    audio = load_audio(media_dir / f"speech.{ext}")
    assert audio.dtype == np.float32 and audio.ndim == 1
    # Lossy codecs add a little padding; the duration must stay close to the source.
    assert abs(len(audio) / MODEL_SAMPLE_RATE - reference) < 0.1
    assert 0.05 < np.abs(audio).max() <= 1.0


def test_audio_from_bytes_and_arrays(media_dir):
    from_bytes = load_audio((media_dir / "speech.wav").read_bytes())
    data, rate = sf.read(str(media_dir / "speech.wav"), dtype="int16")
    stereo = np.stack([data, data], axis=1)
    from_array = audio_from_array(stereo, rate)
    assert abs(len(from_array) - len(from_bytes)) < 10
    assert np.corrcoef(from_array[: len(from_bytes)], from_bytes[: len(from_array)])[0, 1] > 0.99


def test_audio_errors(tmp_path, media_dir):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        load_audio(empty)
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="not a readable|could not be decoded"):
        load_audio(corrupt)
    text = tmp_path / "notes.txt"
    text.write_text("hello, not audio")
    with pytest.raises(MediaError):
        load_audio(text)
    with pytest.raises(MediaError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(16000, np.float32), 16000)
    with pytest.raises(MediaError, match="silent"):
        load_audio(silent)
    with pytest.raises(MediaError, match="limit"):
        load_audio(media_dir / "speech.wav", MediaLimits(max_audio_seconds=1.0))
    with pytest.raises(MediaError, match="too short"):
        audio_from_array(np.full(160, 0.5, np.float32), 16000)
    with pytest.raises(MediaError, match="no audio track"):
        load_audio(media_dir / "mute.mp4")


def test_truncated_header_is_rejected(tmp_path, media_dir):
    broken = tmp_path / "broken.wav"
    broken.write_bytes((media_dir / "speech.wav").read_bytes()[:30])
    with pytest.raises(MediaError):
        load_audio(broken)


def test_image_exif_rotation_and_rgb(tmp_path):
    image = Image.new("RGBA", (60, 30), (255, 0, 0, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise for display
    path = tmp_path / "rotated.jpg"
    image.convert("RGB").save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (30, 60)
    png = tmp_path / "alpha.png"
    image.save(png)
    assert load_image(png).mode == "RGB"


def test_image_errors(tmp_path, media_dir):
    with pytest.raises(MediaError, match="not a readable image"):
        load_image(media_dir / "speech.wav")
    with pytest.raises(MediaError, match="megapixels"):
        load_image(media_dir / "photo.jpg", MediaLimits(max_image_pixels=10_000))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((media_dir / "photo.jpg").read_bytes()[:2000])
    with pytest.raises(MediaError):
        load_image(truncated)


def test_video_sampled_at_2fps_with_audio(media_dir):
    clip = load_video(media_dir / "talking.mp4")
    assert clip.fps == 2.0
    assert len(clip.frames) == 6  # 3 s at 2 fps, an even count
    t, h, w, c = clip.frames.shape
    assert c == 3 and h % 28 == 0 and w % 28 == 0
    limits = MediaLimits()
    assert limits.video_min_pixels <= h * w <= limits.video_max_pixels
    assert clip.audio is not None and abs(len(clip.audio) / MODEL_SAMPLE_RATE - 3.0) < 0.1


def test_short_mute_video_gets_minimum_frames(media_dir):
    clip = load_video(media_dir / "mute.mp4")
    assert clip.audio is None
    assert len(clip.frames) == 4  # 2.5 s -> 4 frames (minimum and even)


def test_video_errors(tmp_path, media_dir):
    with pytest.raises(MediaError, match="video limit"):
        load_video(media_dir / "talking.mp4", MediaLimits(max_video_seconds=1.0))
    with pytest.raises(MediaError, match="no video track"):
        load_video(media_dir / "speech.mp3")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(MediaError):
        load_video(corrupt)


def test_smart_resize_budget():
    assert smart_resize(240, 320, 128 * 28 * 28, 768 * 28 * 28) == (280, 392)
    h, w = smart_resize(2160, 3840, 128 * 28 * 28, 768 * 28 * 28)
    assert h * w <= 768 * 28 * 28 and h % 28 == 0 and w % 28 == 0
    with pytest.raises(MediaError, match="aspect"):
        smart_resize(10, 5000, 100, 1000)


def test_webcam_frames_are_sampled_like_a_files_nearest_to_each_2fps_instant():
    from omni_app.media import frames_to_clip

    # 3.3 s of frames every 0.3 s, each a different grey: at 0, 0.5, 1.0 ... the nearest is taken.
    times = np.arange(11) * 0.3
    frames = [np.full((56, 56, 3), 20 * k, np.uint8) for k in range(len(times))]
    clip = frames_to_clip(frames, times, MediaLimits())
    nearest = [int(np.argmin(np.abs(times - t))) for t in np.arange(len(clip.frames)) / 2.0]
    assert len(clip.frames) == 6 and clip.fps == 2.0
    assert [int(f[0, 0, 0]) // 20 for f in clip.frames] == nearest
