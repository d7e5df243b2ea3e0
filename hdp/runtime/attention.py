"""``hdp_attention``: the one attention call the model makes per layer, for one micro-batch's packed buffer.

Whole sequences run document-masked causal attention locally; each ring's pieces run ring attention
with the ring's members, rings in ring-id order (the same order on every member: no deadlock
without barriers). Outputs are reassembled in buffer order, so the caller sees one [T, Hq, D] tensor.
"""

from __future__ import annotations

import torch

from hdp.runtime.doc_attention import doc_attention
from hdp.runtime.layout import AttentionLayout
from hdp.runtime.ring import ring_attention


def hdp_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout, *,
    timeout_s: float | None = 60.0, scale: float | None = None,
) -> torch.Tensor:
    """Causal attention for the micro-batch ``layout`` describes.

    q [T, Hq, D], k/v [T, Hkv, D] (Hq a multiple of Hkv) are the packed buffer's rows, positions
    already applied (RoPE). Returns out [T, Hq, D], differentiable w.r.t. q, k and v. Ring members
    must call this for the same micro-batch (the plan guarantees they reach it in the same order);
    a peer that does not answer within ``timeout_s`` raises ``RingTimeoutError``.
    """
    if q.shape[0] != layout.num_tokens or k.shape[0] != layout.num_tokens or v.shape != k.shape:
        raise ValueError(
            f"micro-batch {layout.mb_index} of rank {layout.rank} has {layout.num_tokens} tokens; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
    if not layout.rings and len(layout.docs) == len(layout.spans):
        # The common case: only whole sequences, already packed in buffer order.
        return doc_attention(q, k, v, layout.doc_cu_seqlens, scale)[0]

    chunks: list[tuple[int, torch.Tensor]] = []  # (first buffer row, output rows)
    if layout.docs:
        rows = _rows([(d.start, d.end) for d in layout.docs], q.device)
        out = doc_attention(q[rows], k[rows], v[rows], layout.doc_cu_seqlens, scale)[0]
        for d, o in zip(layout.docs, out.split([d.num_tokens for d in layout.docs])):
            chunks.append((d.start, o))
    for slot in layout.rings:  # ring-id order, as built by build_layout
        ranges = [(p.start, p.end) for p in slot.pieces]
        rows = _rows(ranges, q.device)
        out = ring_attention(q[rows], k[rows], v[rows], slot, layout.mb_index, scale, timeout_s)
        # Empty pieces are kept (zero rows): the ring's output must stay in the autograd graph even
        # on a member with no tokens, or its backward would never run and its peers would wait.
        chunks.extend((a, o) for (a, _), o in zip(ranges, out.split([b - a for a, b in ranges])))
    chunks.sort(key=lambda c: c[0])
    return torch.cat([o for _, o in chunks])


def _rows(ranges: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    return torch.cat([torch.arange(a, b, device=device) for a, b in ranges])
