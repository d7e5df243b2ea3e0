"""Document-masked causal attention over whole sequences packed back to back (no communication).

A token attends to earlier tokens of its own sequence only: packed documents never leak into each
other. Kernel by device (taken from the tensors, never named):

* CPU: one fused SDPA call per document (``aten._scaled_dot_product_flash_attention_for_cpu``,
  which also returns the log-sum-exp); memory O(document), no T x T mask. This is the path the
  tests check. Falls back to the exact matmul block kernel if that op is missing.
* CUDA with ``flash_attn`` installed: ``flash_attn_varlen_func`` (one launch for all documents).
* CUDA otherwise: FlexAttention with a document mask (compiled; ``return_lse``).
* Anything else, and float64 on CUDA: the exact matmul block kernel per document.

Returns ``(out [T, Hq, D], lse [Hq, T])``; ``lse`` is float32 (float64 for float64 inputs), detached:
it is reported for checks and merges, gradients flow through ``out`` only.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from hdp.runtime.blocks import acc_dtype, block_forward, expand_kv


def doc_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: Sequence[int], scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention within each document ``[cu_seqlens[i], cu_seqlens[i+1])`` of q [T, Hq, D], k/v [T, Hkv, D]."""
    if q.shape[0] != cu_seqlens[-1] or cu_seqlens[0] != 0:
        raise ValueError(f"cu_seqlens {list(cu_seqlens)[:4]}... does not cover {q.shape[0]} tokens")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.shape[0] == 0:
        return q.new_zeros(q.shape), torch.zeros((q.shape[1], 0), dtype=acc_dtype(q.dtype), device=q.device)
    if q.device.type == "cuda" and q.dtype != torch.float64:
        if q.dtype in (torch.float16, torch.bfloat16) and _flash_attn_varlen() is not None:
            return _flash_varlen(q, k, v, cu_seqlens, scale)
        return _flex(q, k, v, cu_seqlens, scale)
    if q.device.type == "cpu":
        return _per_document(q, k, v, cu_seqlens, scale)
    return reference_doc_attention(q, k, v, cu_seqlens, scale)


def reference_doc_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: Sequence[int], scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact matmul version (differentiable through ``out``), for tests and as a fallback."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    outs, lses = [], []
    for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        p = torch.arange(b - a, device=q.device)
        o, lse = block_forward(q[a:b], k[a:b], v[a:b], p, p, scale)
        outs.append(o.to(q.dtype))
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses, dim=1).detach()


def _per_document(q, k, v, cu_seqlens, scale):
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return reference_doc_attention(q, k, v, cu_seqlens, scale)
    num_q_heads = q.shape[1]
    outs, lses = [], []
    for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        # [1, H, L, D] per document; kv heads expanded here only (the op has no GQA)
        qd = q[a:b].transpose(0, 1).unsqueeze(0)
        kd = expand_kv(k[a:b], num_q_heads).transpose(0, 1).unsqueeze(0)
        vd = expand_kv(v[a:b], num_q_heads).transpose(0, 1).unsqueeze(0)
        out, lse = op(qd, kd, vd, 0.0, True, scale=scale)[:2]
        outs.append(out[0].transpose(0, 1))
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=1).detach().to(acc_dtype(q.dtype))


@lru_cache(maxsize=1)
def _flash_attn_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def _flash_varlen(q, k, v, cu_seqlens, scale):
    cu = torch.tensor(cu_seqlens, dtype=torch.int32, device=q.device)
    max_len = max(b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]))
    out, lse, _ = _flash_attn_varlen()(
        q, k, v, cu, cu, max_len, max_len, softmax_scale=scale, causal=True, return_attn_probs=True
    )
    return out, lse.detach().to(acc_dtype(q.dtype))


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Default dynamic-shape policy: buffer lengths change every micro-batch, and a static compile
    # would recompile for each new length until the cache limit.
    return torch.compile(flex_attention)


def _flex(q, k, v, cu_seqlens, scale):
    from torch.nn.attention.flex_attention import create_block_mask

    lengths = torch.tensor([b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:])], device=q.device)
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=q.device), lengths)

    def mask_mod(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    t = q.shape[0]
    block_mask = create_block_mask(mask_mod, None, None, t, t, device=q.device)
    out, lse = _compiled_flex()(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
        block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1], return_lse=True,
    )
    return out[0].transpose(0, 1), lse[0].detach().to(acc_dtype(q.dtype))
