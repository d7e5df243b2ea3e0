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

The documents' metadata (``PackedDocs``: cu_seqlens on the device, the FlexAttention block mask) is
built once per micro-batch and shared by every layer, as torchtitan builds its masks once per batch.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Any, Sequence

import torch

from hdp.runtime.attention.matmul_attention import acc_dtype, block_forward, expand_kv


class PackedDocs:
    """Whole documents packed back to back: ``cu_seqlens`` and the device-side forms the kernels need.

    The device copies are made on first use and kept, so the L layers of a micro-batch share one
    ``cu_seqlens`` host->device copy and one block mask; ``builds`` counts them (tests check it).
    """

    def __init__(self, cu_seqlens: Sequence[int]) -> None:
        self.cu_seqlens = tuple(cu_seqlens)
        if not self.cu_seqlens or self.cu_seqlens[0] != 0 or any(
                b < a for a, b in zip(self.cu_seqlens, self.cu_seqlens[1:])):
            raise ValueError(f"cu_seqlens must start at 0 and not decrease, got {list(self.cu_seqlens)[:4]}...")
        self.num_tokens = self.cu_seqlens[-1]
        self.max_len = max((b - a for a, b in zip(self.cu_seqlens, self.cu_seqlens[1:])), default=0)
        self.builds: Counter[str] = Counter()
        self._cu: torch.Tensor | None = None
        self._block_mask: Any = None

    def cu_seqlens_on(self, device: torch.device) -> torch.Tensor:
        """int32 [num_docs + 1] on ``device`` (flash-attn varlen), copied once."""
        if self._cu is None:
            self.builds["cu_seqlens"] += 1
            self._cu = torch.tensor(self.cu_seqlens, dtype=torch.int32, device=device)
        return self._cu

    def block_mask_on(self, device: torch.device) -> Any:
        """FlexAttention's document-causal block mask, created once."""
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import create_block_mask

            self.builds["block_mask"] += 1
            lengths = torch.tensor([b - a for a, b in zip(self.cu_seqlens, self.cu_seqlens[1:])], device=device)
            doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)

            def mask_mod(b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
                return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

            t = self.num_tokens
            self._block_mask = create_block_mask(mask_mod, None, None, t, t, device=device)
        return self._block_mask


def doc_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: PackedDocs | Sequence[int], scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention within each document ``[cu_seqlens[i], cu_seqlens[i+1])`` of q [T, Hq, D], k/v [T, Hkv, D]."""
    docs = docs if isinstance(docs, PackedDocs) else PackedDocs(docs)
    cu_seqlens = docs.cu_seqlens
    if q.shape[0] != docs.num_tokens:
        raise ValueError(f"cu_seqlens {list(cu_seqlens)[:4]}... does not cover {q.shape[0]} tokens")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.shape[0] == 0:
        return q.new_zeros(q.shape), torch.zeros((q.shape[1], 0), dtype=acc_dtype(q.dtype), device=q.device)
    if q.device.type == "cuda" and q.dtype != torch.float64:
        if q.dtype in (torch.float16, torch.bfloat16) and _flash_attn_varlen() is not None:
            return _flash_varlen(q, k, v, docs, scale)
        return _flex(q, k, v, docs, scale)
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


def _flash_varlen(q, k, v, docs: PackedDocs, scale):
    cu = docs.cu_seqlens_on(q.device)
    out, lse, _ = _flash_attn_varlen()(
        q, k, v, cu, cu, docs.max_len, docs.max_len, softmax_scale=scale, causal=True, return_attn_probs=True
    )
    return out, lse.detach().to(acc_dtype(q.dtype))


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Default dynamic-shape policy: buffer lengths change every micro-batch, and a static compile
    # would recompile for each new length until the cache limit.
    return torch.compile(flex_attention)


def _flex(q, k, v, docs: PackedDocs, scale):
    out, lse = _compiled_flex()(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
        block_mask=docs.block_mask_on(q.device), scale=scale, enable_gqa=q.shape[1] != k.shape[1], return_lse=True,
    )
    return out[0].transpose(0, 1), lse[0].detach().to(acc_dtype(q.dtype))
