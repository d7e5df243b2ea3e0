"""hdp's attention inside a transformers model, through transformers' own registries.

``register()`` adds ``attn_implementation="hdp"`` to ``AttentionInterface`` (the function every
attention layer calls) and to ``AttentionMaskInterface`` (the function the model calls once per
forward to build its mask). No modelling file is patched or copied.

The micro-batch's ``MicroBatchAttention`` (layout, packed-document metadata, ring contexts with their timeout) reaches the attention function
as the forward keyword ``hdp_layout``: transformers hands a causal LM's extra forward kwargs down to
every attention call, so each call sees the layout of the micro-batch it runs, with no global state.
Positions (RoPE) come from ``position_ids``: the true positions of packed documents and ring pieces.

The mask function exists so that the choice is explicit: an implementation without one gets no mask
from transformers, silently. hdp needs no dense mask (the layout *is* the document-causal mask), so
ours returns None, but first refuses what the layout cannot express: a padding mask or a KV cache.
"""

from __future__ import annotations

from typing import Any

import torch

from hdp.runtime.attention.dispatch import MicroBatchAttention, hdp_attention

ATTN_IMPLEMENTATION = "hdp"
LAYOUT_KWARG = "hdp_layout"


def hdp_attention_forward(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query [1, Hq, T, D], key/value [1, Hkv, T, D] -> ([1, T, Hq, D], None)."""
    batch: MicroBatchAttention | None = kwargs.get(LAYOUT_KWARG)
    if batch is None:
        raise ValueError(f"attn_implementation={ATTN_IMPLEMENTATION!r} needs the micro-batch layout: call the "
                         f"model with {LAYOUT_KWARG}=... (hdp.runtime.model.hf_model.HFCausalLM does)")
    if query.shape[0] != 1:
        raise ValueError(f"hdp attention takes one packed buffer (batch size 1), got batch size {query.shape[0]}")
    if dropout:
        raise ValueError(f"attention dropout {dropout} is not supported by hdp attention: set attention_dropout to 0")
    if kwargs.get("softcap") is not None:
        raise ValueError("attention logit soft-capping is not supported by hdp attention")
    window = kwargs.get("sliding_window")
    if window is not None and any(s.pos_start + s.num_tokens > window for s in batch.layout.spans):
        raise ValueError(f"sliding-window attention (window {window}) is not supported by hdp attention")
    q = query[0].transpose(0, 1)                                      # [T, Hq, D]
    k = key[0].transpose(0, 1)                                        # [T, Hkv, D]
    v = value[0].transpose(0, 1)
    out = hdp_attention(q, k, v, batch, scale=scaling)
    return out[None], None                                            # [1, T, Hq, D]


def hdp_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
             attention_mask: torch.Tensor | None = None, **kwargs: Any) -> None:
    """No dense mask: the layout carries documents and causality. Refuses padding and caches."""
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("hdp attention packs documents without padding: do not pass a padding attention_mask")
    if kv_length != q_length or q_offset or kv_offset:
        raise ValueError("hdp attention trains on whole buffers: a KV cache (use_cache, past keys) is not supported")
    return None


def register() -> None:
    """Make ``attn_implementation="hdp"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, hdp_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, hdp_mask)
