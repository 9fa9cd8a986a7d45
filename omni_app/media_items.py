"""One media item (audio, image or video) as the model takes it, and what a conversation remembers of it.

:func:`process_item` runs the processor on a single item: its placeholder token ids,
the sizes positions are computed from, and its encoder inputs. A :class:`PromptMemo`
keeps, per conversation, each item's fingerprint and layout (not its tensors), so a
prompt can be laid out again without running the processor on older items.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .conversation import AudioPart, ImagePart, VideoPart, video_audio
from .errors import RequestError, hidden
from .media import MODEL_SAMPLE_RATE, VIDEO_FPS

log = logging.getLogger(__name__)

#: Zeros after the audio before the features are cut: more than the STFT window, so the
#: frames under the mask are those of the processor's 300 s padding (the model never sees
#: the padding; computing 300 s of it cost ~0.5 s per clip).
AUDIO_TAIL = MODEL_SAMPLE_RATE
#: Bytes of media layouts a memo keeps (4 per token: room for far more than a context holds).
MEMO_BYTES = 4 * 2**20


@dataclass(frozen=True)
class MediaLayout:
    """What one media item turns into: its placeholder ids and the sizes positions are computed from."""

    kind: str
    ids: np.ndarray
    #: (t, h, w) patches of an image or video.
    grid: tuple[int, int, int] | None = None
    #: Audio feature frames (100 per second) of an audio clip or of a video's sound track.
    audio_frames: int | None = None
    #: Seconds per temporal patch of a video.
    second_per_grid: float | None = None

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes) + 64


class PromptMemo:
    """Per conversation: media fingerprints and layouts already computed (bounded, thread-safe)."""

    def __init__(self, limit_bytes: int = MEMO_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self._bytes = 0
        self._layouts: OrderedDict[tuple[str, bool], MediaLayout] = OrderedDict()
        # Keyed by the part object: a conversation hands the same parts back every turn, so
        # each is hashed once. Entries go when the part does.
        self._fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def fingerprint(self, part, use_audio_in_video: bool) -> str:
        with self._lock:
            known = self._fingerprints.get(part)
        if known is None:
            known = fingerprint(part)
            with self._lock:
                self._fingerprints[part] = known
        return known + (":av" if use_audio_in_video and isinstance(part, VideoPart) else "")

    def layout(self, key: tuple[str, bool]) -> MediaLayout | None:
        with self._lock:
            found = self._layouts.get(key)
            if found is not None:
                self._layouts.move_to_end(key)
            return found

    def remember(self, key: tuple[str, bool], layout: MediaLayout) -> None:
        with self._lock:
            old = self._layouts.pop(key, None)
            self._bytes += layout.nbytes - (old.nbytes if old is not None else 0)
            self._layouts[key] = layout
            while self._bytes > self.limit_bytes and len(self._layouts) > 1:
                self._bytes -= self._layouts.popitem(last=False)[1].nbytes

    @property
    def nbytes(self) -> int:
        return self._bytes


def fingerprint(part) -> str:
    """A digest of a media part's content (equal placeholder counts do not mean equal media)."""
    digest = hashlib.sha256()
    if isinstance(part, AudioPart):
        arrays = [("audio", part.samples)]
    elif isinstance(part, ImagePart):
        image = part.image
        arrays = [(f"image:{image.mode}:{image.size}", np.asarray(image))]
    elif isinstance(part, VideoPart):
        clip = part.clip
        arrays = [(f"video:{clip.fps}", clip.frames)]
        if clip.audio is not None:
            arrays.append(("track", clip.audio))
    else:
        raise TypeError(f"not a media part: {type(part).__name__}")
    for label, array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{label}:{array.dtype}:{array.shape};".encode())
        digest.update(array.data)
    return digest.hexdigest()[:32]


#: Video frames are already sampled at 2 fps within the per-frame budget: the processor
#: must neither resample them (TMRoPE's time ids come from ``fps``) nor re-derive a budget
#: (``cap_pixels_per_frame`` matches qwen-vl-utils).
VIDEO_KWARGS = {"fps": VIDEO_FPS, "do_sample_frames": False, "cap_pixels_per_frame": True}


def process_item(processor, part, use_audio_in_video: bool) -> tuple[MediaLayout, dict]:
    """Run the processor on one media item: its layout and its encoder inputs."""
    kwargs: dict = {"return_tensors": "pt"}
    audio = None
    if isinstance(part, AudioPart):
        text, audio = processor.audio_token, part.samples
    elif isinstance(part, ImagePart):
        text = processor.image_token
        kwargs["images"] = [part.image]
    else:
        text = processor.video_token
        kwargs.update(videos=[part.clip.frames], **VIDEO_KWARGS)
        if use_audio_in_video:
            audio = video_audio(part.clip)
            kwargs.update(load_audio_from_video=True, audio_from_video_indices=[0])
    if audio is not None:
        kwargs["audio"] = [audio]
        kwargs["audio_kwargs"] = {"max_length": len(audio) + AUDIO_TAIL}
    try:
        out = processor(text=[text], **kwargs)
    except (ValueError, RuntimeError) as exc:
        raise hidden(RequestError, "The input could not be prepared for the model: try a shorter or smaller file.",
                     exc, log) from exc
    tensors: dict = {}
    grid = seconds = frames = None
    kind = "audio" if isinstance(part, AudioPart) else "image" if isinstance(part, ImagePart) else "video"
    if kind == "image":
        tensors = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
        grid = tuple(int(v) for v in out["image_grid_thw"][0])
    elif kind == "video":
        tensors = {k: out[k] for k in ("pixel_values_videos", "video_grid_thw", "video_second_per_grid")}
        grid = tuple(int(v) for v in out["video_grid_thw"][0])
        seconds = float(out["video_second_per_grid"][0])
    if audio is not None:
        frames = int(out["feature_attention_mask"][0].sum())
        tensors["features"] = out["input_features"][0, :, :frames].clone()
    ids = out["input_ids"][0].numpy().astype(np.int32)
    return MediaLayout(kind, ids, grid, frames, seconds), tensors
