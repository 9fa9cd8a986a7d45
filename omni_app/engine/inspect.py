"""How the model sees one request, computed with the loaded model's own code and config.

Each function returns plain numbers for one of the "inside the model" pictures and
:func:`inspect` gathers them into one :class:`~omni_app.inside.Inspection`, which crosses
the app's seam as plain data. Nothing here re-implements the model: positions come from
``get_rope_index``, the attention pattern from the DiT's own block layout, the chunk
schedule and timeline from what the streaming engine recorded.
"""

from __future__ import annotations

import numpy as np

from ..conversation import Conversation, ImagePart, VideoPart
from ..events import Trace
from ..inside import KINDS, AudioView, Inspection, TokenMap, VisionView, chunk_audio, timeline
from ..prompt import PreparedInputs
from .loader import LoadedModel


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
    from .prompt_inputs import thinker_rope_index

    thinker = loaded.model.thinker
    cpu = {k: (v.cpu() if hasattr(v, "cpu") else v) for k, v in prepared.tensors.items()}
    rope = thinker_rope_index(thinker, cpu, prepared.use_audio_in_video)
    return rope[:, 0, :].cpu().numpy(), int(thinker.config.position_id_per_seconds)


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


def inspect(loaded: LoadedModel, conversation: Conversation, trace: Trace | None) -> Inspection:
    """How the loaded model sees ``conversation``, and how ``trace``'s reply was made."""
    from ..prompt import build_inputs

    prepared = build_inputs(conversation, loaded.processor)
    tokens = token_map(loaded, prepared)
    positions, per_second = rope_positions(loaded, prepared)
    picture = _first_picture(conversation)
    vision = vision_view(loaded, prepared, *picture) if picture else None
    trace = trace or Trace()
    chunks = tuple(trace.chunks)
    attention = dit_attention(loaded, len(trace.codes)) if trace.codes and chunks else None
    return Inspection(
        tokens=tokens, positions=positions, per_second=per_second, audio=audio_view(loaded, prepared),
        vision=vision, attention=attention, chunks=chunks, chunk_spans=chunk_audio(list(chunks)),
        timeline=timeline(list(trace.timeline), list(chunks)) if trace.timeline else None,
    )


def _first_picture(conversation: Conversation) -> tuple[np.ndarray, str] | None:
    # The first picture: its grid is the first one the processor reports.
    for turn in conversation.turns:
        for part in turn.parts:
            if isinstance(part, ImagePart):
                return np.asarray(part.image), "image"
            if isinstance(part, VideoPart):
                return part.clip.frames[0], "video"
    return None
