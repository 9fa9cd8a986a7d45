"""How the model sees one request, computed with the loaded model's own code and config.

Each function returns plain numbers (numpy, dicts) for one of the "inside the model"
pictures; :mod:`omni_app.inside_plots` draws them. Nothing here re-implements the model:
positions come from ``get_rope_index``, the attention pattern from the DiT's own block
layout, the chunk schedule and timeline from what the streaming engine recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .conversation import PreparedInputs
from .engine.code2wav import VOCODER_HOLD, ChunkPlan
from .engine.loader import LoadedModel

KINDS = ("text", "audio", "image", "video")


@dataclass
class TokenMap:
    kinds: list[str]  # per prompt token: text / audio / image / video
    counts: dict[str, int]
    #: Runs of consecutive media tokens (kind, first index, length), in prompt order.
    runs: list[tuple[str, int, int]]


def token_map(loaded: LoadedModel, prepared: PreparedInputs) -> TokenMap:
    """The prompt as the Thinker sees it, token by token, with its media runs."""
    cfg = loaded.model.thinker.config
    ids = prepared.tensors["input_ids"][0].tolist()
    lookup = {cfg.audio_token_index: "audio", cfg.image_token_index: "image", cfg.video_token_index: "video"}
    kinds = [lookup.get(i, "text") for i in ids]
    runs: list[tuple[str, int, int]] = []
    for index, kind in enumerate(kinds):
        if kind == "text":
            continue
        if runs and runs[-1][0] == kind and runs[-1][1] + runs[-1][2] == index:
            runs[-1] = (kind, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((kind, index, 1))
    return TokenMap(kinds, {k: kinds.count(k) for k in KINDS}, runs)


def rope_positions(loaded: LoadedModel, prepared: PreparedInputs) -> tuple[np.ndarray, int]:
    """TMRoPE (temporal, height, width) ids per prompt token, and position ids per second."""
    from .engine.stepper import thinker_rope_index

    thinker = loaded.model.thinker
    cpu = {k: (v.cpu() if hasattr(v, "cpu") else v) for k, v in prepared.tensors.items()}
    rope = thinker_rope_index(thinker, cpu, prepared.use_audio_in_video)
    return rope[:, 0, :].cpu().numpy(), int(thinker.config.position_id_per_seconds)


@dataclass
class AudioView:
    mel: np.ndarray  # (128, frames) log-mel the encoder receives, 100 frames per second
    block_frames: int  # frames per encoder block (2 s)
    tokens: int  # audio tokens this clip became
    seconds: float


def audio_view(loaded: LoadedModel, prepared: PreparedInputs) -> AudioView | None:
    """The latest audio input (the turn's own) as the audio encoder receives it."""
    features = prepared.tensors.get("input_features")
    if features is None:
        return None
    mask = prepared.tensors["feature_attention_mask"][-1].bool()
    mel = features[-1][:, mask].float().cpu().numpy()
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import _get_feat_extract_output_lengths

    n_window = loaded.model.thinker.config.audio_config.n_window
    # The processor's own count: the encoder halves the frame rate twice (~4 frames per token).
    tokens = int(_get_feat_extract_output_lengths(prepared.tensors["feature_attention_mask"].sum(-1))[-1])
    return AudioView(mel=mel, block_frames=2 * n_window, tokens=tokens, seconds=mel.shape[1] / 100)


@dataclass
class VisionView:
    image: np.ndarray  # RGB at the resolution the processor chose
    patch: int
    merge: int
    tokens_per_frame: int
    frame_times: list[float]  # seconds, videos only
    kind: str


def vision_view(loaded: LoadedModel, prepared: PreparedInputs, picture: np.ndarray, kind: str) -> VisionView:
    """An image (or a video's first frame) with the grid the vision encoder cuts it into."""
    from PIL import Image

    cfg = loaded.model.thinker.config.vision_config
    key = "image_grid_thw" if kind == "image" else "video_grid_thw"
    t, h, w = prepared.tensors[key][0].tolist()
    resized = np.asarray(Image.fromarray(picture).resize((w * cfg.patch_size, h * cfg.patch_size)))
    tokens = h * w // cfg.spatial_merge_size**2
    times: list[float] = []
    if kind == "video":
        per_grid = float(prepared.tensors["video_second_per_grid"][0])
        times = [i * per_grid / cfg.temporal_patch_size for i in range(t * cfg.temporal_patch_size)]
    return VisionView(resized, cfg.patch_size, cfg.patch_size * cfg.spatial_merge_size, tokens, times, kind)


def dit_attention(loaded: LoadedModel, codes: int) -> dict:
    """Which blocks of mel frames each block may attend to, per DiT layer, and through all of them.

    From the config (block size, look-ahead and look-back layers). Masks are per block of
    24 frames, as the DiT builds them; :func:`frame_mask` expands one to frames.
    """
    cfg = loaded.model.token2wav.config.dit_config
    frames = codes * cfg.repeats
    blocks = -(-frames // cfg.block_size)
    diff = np.arange(blocks)[None, :] - np.arange(blocks)[:, None]
    layers = []
    for i in range(cfg.num_hidden_layers):
        back = 1 if i in cfg.look_backward_layers else 0
        ahead = 1 if i in cfg.look_ahead_layers else 0
        layers.append((diff >= -back) & (diff <= ahead))
    field = np.eye(blocks, dtype=bool)
    for mask in layers:  # what reaches each output block through all layers
        field = (field.astype(np.int32) @ mask.astype(np.int32)) > 0
    return {"frames": frames, "block": cfg.block_size, "layers": layers, "field": field,
            "back_blocks": len(cfg.look_backward_layers), "ahead_blocks": len(cfg.look_ahead_layers)}


def frame_mask(block_mask: np.ndarray, frames: int, block: int) -> np.ndarray:
    """A per-block mask expanded to mel frames (frames x frames)."""
    index = np.arange(frames) // block
    return block_mask[index][:, index]


def chunk_audio(plans: list[ChunkPlan]) -> list[tuple[int, int]]:
    """Mel frames of speech each streamed chunk delivered (the vocoder holds 20 back)."""
    spans, start = [], 0
    for plan in plans:
        end = plan.keep_end if plan.last else plan.keep_end - VOCODER_HOLD
        spans.append((start, end))
        start = end
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
