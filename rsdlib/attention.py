"""The decoder's attention: transformers' sdpa attention without copying grouped KV heads under a padding mask.

RSD (Section 3, Algorithm 1) decodes many rows at once, and rows of different prompt lengths are
left-padded, so every decoding step passes a padding mask. The paper's models use grouped-query
attention (s1.1-7B: 28 query heads on 4 KV heads, Qwen3-0.6B: 16 on 8). transformers' "sdpa" attention
before 5.23 answers a mask on grouped heads with ``repeat_kv``: the whole KV cache copied n_rep times
per layer per step (estimated to triple a decode step of the paper's pair at batch 64 on an H100); 5.23
and later avoid the copy for one-token steps only, not for speculative rounds of draft_tokens + 1.

``packed_sdpa_attention`` computes what sdpa computes, but when the heads are grouped and the mask
is shared by all heads it folds the n_rep query heads of each KV head into the query-length axis,
``(B, H, Q, D) -> (B, KVH, n_rep * Q, D)``, calls ``scaled_dot_product_attention`` once on the KV heads
as they are, and unfolds the output. A one-token step's (B, 1, 1, L) mask broadcasts over the folded
rows as it is (the very computation of transformers >= 5.23, bit for bit); a step of 2 to
``MAX_PACKED_QUERY`` tokens on a cache gets its (B, 1, Q, L) mask repeated n_rep times along the query
axis (a copy of the mask, never of the cache). Every other case (a prefill, no mask, a per-head mask,
dropout, softcap, position bias...) goes to transformers' own ``sdpa_attention_forward`` unchanged.

It is registered under ``PACKED_SDPA`` with transformers' ``AttentionInterface`` and, with sdpa's own
mask builder, with ``AttentionMaskInterface`` (so transformers builds exactly the masks it builds for
"sdpa", sliding windows included). ``use_for_decoding(model)`` switches an sdpa model with grouped heads
to it; ``rsdlib.decoding.Decoder`` does so for the models it decodes with. Training and vLLM never see
it, and a saved model does not carry it (transformers does not serialise ``_attn_implementation``).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations import sdpa_attention
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "rsdlib_packed_sdpa"  # the attention implementation's registered name
SDPA_NAMES = ("sdpa", PACKED_SDPA)  # implementations that read sdpa's masks (``rsdlib.engine.decode_mask_ok``)
# Longest multi-token query folded, on a cache only: a step of Q tokens on a cache of L reads it once, so
# repeat_kv's n_rep copies cost more than the attention itself while Q is small (speculative rounds of
# Q = draft_tokens + 1, look-aheads); a prefill (no cache before it) is left to sdpa: its Q x L work
# amortises the copy, and folding would copy its (B, 1, Q, L) mask n_rep times instead.
MAX_PACKED_QUERY = 16


def _packs(module, query, key, attention_mask, dropout: float, kwargs: dict) -> bool:
    """Whether ``packed_sdpa_attention`` folds this call (else it is transformers' sdpa unchanged)."""
    n_rep = getattr(module, "num_key_value_groups", 1)
    if n_rep <= 1 or attention_mask is None or attention_mask.dim() != 4 or attention_mask.shape[1] != 1:
        return False  # no grouping, no mask (sdpa's own enable_gqa path) or a per-head mask
    if dropout or any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "s_aux", "sinks")):
        return False
    if query.shape[1] != key.shape[1] * n_rep:
        return False
    q_len = query.shape[2]
    return q_len == 1 or (q_len <= MAX_PACKED_QUERY and key.shape[2] > q_len)


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, Q, D), key/value (B, KVH, L, D), mask
    (B or 1, 1 or H, Q or 1, L); returns (B, Q, H, Dv) and no weights, as sdpa does."""
    if not _packs(module, query, key, attention_mask, dropout, kwargs):
        return sdpa_attention.sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                                     scaling=scaling, is_causal=is_causal, **kwargs)
    batch, heads, q_len, head_dim = query.shape
    kv_heads, n_rep = key.shape[1], heads // key.shape[1]
    # query head h reads KV head h // n_rep (repeat_kv's order): fold its n_rep heads into the query axis
    folded = query.reshape(batch, kv_heads, n_rep * q_len, head_dim)  # row r * Q + q = (head g * n_rep + r, query q)
    mask = attention_mask
    if q_len > 1 and mask.shape[2] > 1:  # (B, 1, Q, L) -> (B, 1, n_rep * Q, L), the same row order
        mask = mask[:, :, None].expand(-1, -1, n_rep, -1, -1).reshape(mask.shape[0], 1, n_rep * q_len, mask.shape[-1])
    # with a mask, sdpa's is_causal is False (transformers passes causality in the mask)
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=mask, dropout_p=0.0,
                                                           scale=scaling, is_causal=False)  # (B, KVH, n_rep * Q, Dv)
    out = out.reshape(out.shape[0], heads, q_len, value.shape[-1])  # (B, H, Q, Dv)
    return out.transpose(1, 2).contiguous(), None  # (B, Q, H, Dv)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)  # the masks transformers builds for "sdpa"


def grouped_heads(config) -> bool:
    """Whether a model config's attention groups its query heads (num_key_value_heads < num_attention_heads)."""
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return bool(heads and kv_heads and kv_heads < heads)


def use_for_decoding(model) -> bool:
    """Switch ``model`` (transformers, on "sdpa", with grouped heads) to ``PACKED_SDPA``; True if it uses it now.

    Anything else is left as it is: eager, flash or flex attention, models without grouped heads, test
    doubles without a config. Same outputs as sdpa; only the decoder calls it.
    """
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current == PACKED_SDPA:
        return True
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if current != "sdpa" or not grouped_heads(text_config) or not hasattr(model, "set_attn_implementation"):
        return False
    model.set_attn_implementation(PACKED_SDPA)
    return model.config._attn_implementation == PACKED_SDPA
