"""How many replies fit in the GPU memory left after loading a model."""

from __future__ import annotations

import logging

from .loader import LoadedModel

log = logging.getLogger(__name__)


def fit_batch(loaded: LoadedModel, requested: int) -> int:
    """``requested``, or fewer where the GPU memory left after loading can't hold that many replies.

    A reply holds the Thinker's and the Talker's KV caches; each is sized here for a long
    conversation (:data:`TOKENS_PER_REPLY` tokens), with a quarter of the free memory kept
    for activations and the speech decoder.
    """
    import torch

    if loaded.device.type != "cuda":
        return requested
    free, _ = torch.cuda.mem_get_info(loaded.device)
    per_reply = TOKENS_PER_REPLY * (kv_bytes_per_token(loaded.model.thinker.config.get_text_config(), loaded.dtype)
                                    + kv_bytes_per_token(loaded.model.talker.config, loaded.dtype))
    fits = max(1, int(free * 0.75 // per_reply))
    if fits < requested:
        log.warning("GPU memory left after loading holds %d replies of %d tokens; batching %d instead of %d",
                    fits, TOKENS_PER_REPLY, fits, requested)
    return min(requested, fits)


#: Tokens of context a reply's caches are sized for when the batch is fitted to GPU memory.
TOKENS_PER_REPLY = 8192


def kv_bytes_per_token(config, dtype) -> int:
    """Bytes of keys and values one token takes in a decoder's cache."""
    import torch

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * width
