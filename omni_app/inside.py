"""What the "inside the model" pictures show, as plain data (numpy, lists, dicts).

A backend that holds the weights fills an :class:`Inspection` (see
:mod:`omni_app.engine.inspect`); :mod:`omni_app.inside_plots` draws it. The functions
here only rearrange numbers the model or the streaming engine already produced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .events import ChunkPlan

KINDS = ("text", "audio", "image", "video")


@dataclass
class TokenMap:
    kinds: list[str]  # per prompt token: text / audio / image / video
    counts: dict[str, int]
    #: Runs of consecutive media tokens (kind, first index, length), in prompt order.
    runs: list[tuple[str, int, int]]


@dataclass
class AudioView:
    mel: np.ndarray  # (128, frames) log-mel the encoder receives, 100 frames per second
    block_frames: int  # frames per encoder block (2 s)
    tokens: int  # audio tokens this clip became
    seconds: float


@dataclass
class VisionView:
    image: np.ndarray  # RGB at the resolution the processor chose
    patch: int
    merge: int
    tokens_per_frame: int
    frame_times: list[float]  # seconds, videos only
    kind: str


def frame_mask(block_mask: np.ndarray, frames: int, block: int) -> np.ndarray:
    """A per-block mask expanded to mel frames (frames x frames)."""
    index = np.arange(frames) // block
    return block_mask[index][:, index]


def chunk_audio(plans: list[ChunkPlan]) -> list[tuple[int, int]]:
    """Mel frames of speech each streamed chunk delivered (the vocoder holds some back)."""
    spans, start = [], 0
    for plan in plans:
        spans.append((start, plan.audio_end))
        start = plan.audio_end
    return spans


def timeline(events: list[tuple[float, str, int]], plans: list[ChunkPlan]) -> dict:
    """Tokens, codes and chunks against time, and the playback that the chunks allowed."""
    series = {kind: [(t, n) for t, k, n in events if k == kind] for kind in ("token", "code", "chunk")}
    arrivals = [t for t, _ in series["chunk"]]
    seconds = [(end - start) / 100 for start, end in chunk_audio(plans)][: len(arrivals)]
    playback, clock, stalls = [], None, 0.0
    for arrived, length in zip(arrivals, seconds, strict=False):
        clock = arrived if clock is None else max(clock, arrived)
        if playback and arrived > playback[-1][1]:
            stalls += arrived - playback[-1][1]
        playback.append((clock, clock + length))
        clock += length
    first_text = series["token"][0][0] if series["token"] else None
    first_audio = arrivals[0] if arrivals else None
    return {**series, "playback": playback, "stall_seconds": stalls, "first_text": first_text,
            "first_audio": first_audio}


@dataclass
class Inspection:
    """Everything the "inside the model" pictures show for one turn, as plain data."""

    tokens: TokenMap
    #: TMRoPE ids (3, prompt tokens) and position ids per second of media.
    positions: np.ndarray
    per_second: int
    audio: AudioView | None
    vision: VisionView | None
    #: The speech decoder's block attention (:func:`dit_attention`), when the reply spoke.
    attention: dict | None
    #: The chunks the reply was streamed in and the mel frames each delivered.
    chunks: tuple[ChunkPlan, ...]
    chunk_spans: list[tuple[int, int]]
    #: Tokens, codes, chunks and playback over time (:func:`timeline`), streaming engine only.
    timeline: dict | None
