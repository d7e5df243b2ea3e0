"""Document-masked causal attention over whole sequences packed back to back (no communication).

A token attends to earlier tokens of its own sequence only: packed documents never leak into each
other. Kernel by device (taken from the tensors, never named):

* CPU: one fused SDPA call per document (``aten._scaled_dot_product_flash_attention_for_cpu``,
  which also returns the log-sum-exp); memory O(document), no T x T mask. This is the path the
  tests check. Falls back to the exact matmul block kernel if that op is missing.
* CUDA with ``flash_attn`` installed: ``flash_attn_varlen_func`` (one launch for all documents).
* CUDA otherwise: FlexAttention (compiled once with dynamic shapes; ``return_lse``) with a block
  mask built from cu_seqlens, never over the T x T grid (``document_block_mask``).
* Anything else, and float64 on CUDA: the exact matmul block kernel per document.

Returns ``(out [T, Hq, D], lse [Hq, T])``; ``lse`` is float32 (float64 for float64 inputs), detached:
it is reported for checks and merges, gradients flow through ``out`` only.

The documents' metadata (``PackedDocs``: cu_seqlens on the device, the FlexAttention block mask) is
built once per micro-batch and shared by every layer, as torchtitan builds its masks once per batch.
"""

from __future__ import annotations

import bisect
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
        """FlexAttention's document-causal block mask, created once (``document_block_mask``)."""
        if self._block_mask is None:
            self.builds["block_mask"] += 1
            self._block_mask = document_block_mask(self.cu_seqlens, device)
        return self._block_mask


FLEX_BLOCK = 128
"""FlexAttention's default sparse block size (rows and columns of one block of the mask)."""


def document_block_mask(cu_seqlens: Sequence[int], device: torch.device, block: int = FLEX_BLOCK) -> Any:
    """The block mask ``create_block_mask`` would build for document-causal attention, without a T x T grid.

    ``create_block_mask`` evaluates the mask_mod on every (query, key) pair: ~4 GiB per bool
    intermediate at 64K tokens. Here each block's class follows from cu_seqlens alone, because
    documents are contiguous: query block i and key block j < i share a document iff the key block's
    last row and the query block's first row are in one document (the block is then *partial*, or
    *full* when the key block's first row and the query block's last row are too, and both blocks
    lie inside T); the diagonal block is always partial. Memory O((T/block)^2), no host sync (the
    per-token document ids use ``repeat_interleave`` with ``output_size``), the same blocks as
    ``create_block_mask`` (tests). Token ids are padded to whole blocks with a document of their own,
    so the mask_mod never reads past the end, whatever rows a kernel evaluates in the last block.
    """
    from torch.nn.attention.flex_attention import BlockMask

    t = cu_seqlens[-1]
    num_blocks = -(-t // block)
    lengths = [b - a for a, b in zip(cu_seqlens, cu_seqlens[1:])] + [num_blocks * block - t]

    def doc_of(row: int) -> int:  # the document holding row (an empty document holds none)
        return bisect.bisect_right(cu_seqlens, row) - 1

    rows = range(num_blocks)
    first = [doc_of(i * block) for i in rows]                      # query block i's first row
    last = [doc_of(min((i + 1) * block, t) - 1) for i in rows]     # its last row inside T
    inside = [int((i + 1) * block <= t) for i in rows]
    # One host->device copy of a few ints per block and document (never an index of T entries).
    packed = torch.tensor(first + last + inside + lengths, device=device)
    first_d, last_d, inside_d, lengths_d = packed.split([num_blocks] * 3 + [len(lengths)])
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths_d,
                                  output_size=num_blocks * block)  # [nb * block]: no device->host sync

    def mask_mod(b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    i, j = torch.arange(num_blocks, device=device)[:, None], torch.arange(num_blocks, device=device)[None, :]
    below = j < i
    full = below & (first_d[None, :] == last_d[:, None]) & (inside_d[:, None] > 0)  # [nb, nb]
    partial = ((i == j) | (below & (last_d[None, :] == first_d[:, None]))) & ~full  # [nb, nb]
    mask = BlockMask.from_kv_blocks(*_ordered(partial), *_ordered(full), BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(t, t))
    # The block counts change with every buffer length: dynamic from the first compile, which would
    # otherwise specialise on them and recompile once (dims of size 1 are specialised whatever we say).
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks",
                 "q_indices", "full_q_num_blocks", "full_q_indices"):
        tensor = getattr(mask, name)
        for dim in range(2, tensor.dim()):
            torch._dynamo.maybe_mark_dynamic(tensor, dim)
    return mask


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[nb, nb] bool -> (kv_num_blocks [1, 1, nb], kv_indices [1, 1, nb, nb]) int32, as flex_attention stores them."""
    dense = blocks.to(torch.int32)[None, None]
    return dense.sum(-1, dtype=torch.int32), torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32)


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


@lru_cache(maxsize=None)
def _compiled_flex(backend: Any = "inductor"):
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic=True: buffer lengths change every micro-batch; a static compile would recompile for
    # each new length (and "automatic dynamic" once more after the first) until the cache limit.
    return torch.compile(flex_attention, backend=backend, dynamic=True)


def _flex(q, k, v, docs: PackedDocs, scale, backend: Any = "inductor"):
    from torch.nn.attention.flex_attention import AuxRequest

    # return_aux, not the deprecated return_lse: its warn-once state is guarded, and the first call
    # after the warning recompiled.
    out, aux = _compiled_flex(backend)(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
        block_mask=docs.block_mask_on(q.device), scale=scale, enable_gqa=q.shape[1] != k.shape[1],
        return_aux=AuxRequest(lse=True),
    )
    return out[0].transpose(0, 1), aux.lse[0].detach().to(acc_dtype(q.dtype))
