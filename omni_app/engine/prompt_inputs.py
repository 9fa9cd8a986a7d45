"""What the Thinker makes of a prompt before its decoder: TMRoPE positions and media embeddings.

Both follow the model's own code (``get_rope_index``, the encoders and placeholder masks
of its ``forward``), so a prompt run here in pieces gets what ``forward`` would give it.
"""

from __future__ import annotations

import torch

#: What the Thinker's forward takes besides ids and positions: the encoders' inputs.
ENCODER_INPUTS = ("input_features", "feature_attention_mask", "pixel_values", "image_grid_thw",
                  "pixel_values_videos", "video_grid_thw", "video_second_per_grid")


def audio_lengths(inputs: dict) -> torch.Tensor | None:
    """Audio feature frames per clip: given as ``audio_lengths`` or counted from the feature mask."""
    if inputs.get("audio_lengths") is not None:
        return inputs["audio_lengths"]
    mask = inputs.get("feature_attention_mask")
    return mask.sum(-1) if mask is not None else None


def thinker_rope_index(thinker, inputs: dict, use_audio_in_video: bool) -> torch.Tensor:
    """TMRoPE position ids ``(3, 1, P)`` of a prompt, from the model's own ``get_rope_index``."""
    ids = inputs["input_ids"]
    rope, _ = thinker.get_rope_index(
        ids, inputs.get("image_grid_thw"), inputs.get("video_grid_thw"), torch.ones_like(ids), use_audio_in_video,
        audio_lengths(inputs), inputs.get("video_second_per_grid"),
    )
    return rope


def prompt_positions(thinker, rope_inputs: dict, use_audio_in_video: bool) -> torch.Tensor:
    """The Thinker's ``(4, 1, P)`` prefill positions: a plain 1-D row (for the causal mask) over TMRoPE."""
    ids = rope_inputs["input_ids"]
    rope = thinker_rope_index(thinker, rope_inputs, use_audio_in_video).to(ids.device)
    return torch.cat([torch.arange(ids.shape[1], device=ids.device).view(1, 1, -1), rope], dim=0)


def media_embeddings(thinker_model, input_ids: torch.Tensor, encoders: dict) -> torch.Tensor:
    """The prompt's input embeddings with its media encoded in: what the Thinker's ``forward`` feeds its decoder.

    The same steps as ``forward``, with the model's own encoders and placeholder masks.
    """
    embeds = thinker_model.get_input_embeddings()(input_ids)
    if encoders.get("input_features") is not None:
        audio = thinker_model.get_audio_features(encoders["input_features"], encoders.get("feature_attention_mask"),
                                                 None, return_dict=True).last_hidden_state
        _, _, mask = thinker_model.get_placeholder_mask(input_ids, inputs_embeds=embeds)
        embeds = embeds.masked_scatter(mask, audio.to(embeds.device, embeds.dtype))
    for kind, pixels, grid in (("image", "pixel_values", "image_grid_thw"),
                               ("video", "pixel_values_videos", "video_grid_thw")):
        if encoders.get(pixels) is None:
            continue
        encode = thinker_model.get_image_features if kind == "image" else thinker_model.get_video_features
        features = torch.cat(encode(encoders[pixels], encoders.get(grid), return_dict=True).pooler_output, dim=0)
        features = features.to(embeds.device, embeds.dtype)
        masks = thinker_model.get_placeholder_mask(input_ids, inputs_embeds=embeds,
                                                   **{f"{kind}_features": features})
        embeds = embeds.masked_scatter(masks[0] if kind == "image" else masks[1], features)
    return embeds
