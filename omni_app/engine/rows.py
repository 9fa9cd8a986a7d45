"""One decoder step for many replies at once, each row with its own KV cache and positions.

The Thinker's text model and the Talker's model are the same kind of decoder. Here one
step runs their projections and MLPs on all rows together (one matrix product per weight
for the whole batch, where the launch and Python overheads of a step are paid once) and
their attention per row, against that row's own cache: rows never see each other, and a
reply can join or leave between any two steps.

The layers are the model's own modules, called in the order transformers' ``forward``
calls them for one token with a cache (no mask: causal attention over the whole cache),
so a row's result is that forward's result.

Row independence: a matrix kernel may pick its method by the number of rows (on x86
CPUs one row, or a count that is not a multiple of 4, takes another path than full
tiles of 4 rows), and then a row's numbers depend on how many others there are. The
steps therefore pad their rows to a multiple of ``quantum`` (found for the machine at
hand by :mod:`.invariance`): a reply's numbers are then the same alone or in any batch.
"""

from __future__ import annotations

import torch


def padded(count: int, quantum: int) -> int:
    """``count`` rounded up to a multiple of ``quantum``."""
    return -(-count // quantum) * quantum


def pad_to(tensor: torch.Tensor, rows: int, dim: int = 0) -> torch.Tensor:
    """``tensor`` with zero rows appended along ``dim`` up to ``rows``."""
    missing = rows - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)


def decode(model, embeds: torch.Tensor, positions: torch.Tensor, caches: list) -> torch.Tensor:
    """One step of the decoder ``model`` (its ``layers``, ``norm`` and ``rotary_emb``) for every row.

    ``embeds`` ``(rows, 1, hidden)`` and ``positions`` ``(3, rows, 1)`` are padded; the first
    ``len(caches)`` rows are real and each grows its own cache by one token. Returns the final
    hidden states ``(rows, 1, hidden)`` (padding rows hold nothing meaningful).
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    rows = embeds.shape[0]
    real = len(caches)
    cos, sin = model.rotary_emb(embeds, positions)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(model.config._attn_implementation, None)
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import apply_rotary_pos_emb

    hidden = embeds
    for layer in model.layers:
        residual = hidden
        normed = layer.input_layernorm(hidden)
        attn = layer.self_attn
        query = attn.q_proj(normed).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        key = attn.k_proj(normed).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        value = attn.v_proj(normed).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        outputs = []
        for row in range(real):
            keys, values = caches[row].update(key[row:row + 1], value[row:row + 1], attn.layer_idx)
            out, _ = attention(attn, query[row:row + 1], keys, values, None, dropout=0.0, scaling=attn.scaling,
                               sliding_window=attn.sliding_window)
            outputs.append(out)
        out = pad_to(torch.cat(outputs, dim=0), rows)
        hidden = residual + attn.o_proj(out.reshape(rows, 1, -1).contiguous())
        residual = hidden
        hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
    return model.norm(hidden)
