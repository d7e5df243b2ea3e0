"""``hdp_attention``: the one attention call the model makes per layer, for one micro-batch's packed buffer.

Whole sequences run document-masked causal attention locally; each ring's pieces run ring attention
with the ring's members, rings in ring-id order (the same order on every member: no deadlock
without barriers). Outputs are reassembled in buffer order, so the caller sees one [T, Hq, D] tensor.

What only depends on the micro-batch (row gathers, cu_seqlens on the device, block masks, ring
peers, timeout and transfer buffers) is a ``MicroBatchAttention``, built once per micro-batch with
its layout and passed down to every layer: L layers share one set of metadata.
"""

from __future__ import annotations

import torch

from hdp.runtime.doc_attention import PackedDocs, doc_attention
from hdp.runtime.layout import AttentionLayout
from hdp.runtime.ring import RingContext, ring_attention


class MicroBatchAttention:
    """One micro-batch's attention metadata on one rank, shared by every layer.

    Work order: the whole documents packed back to back, then each ring's two pieces in ring-id
    order. When that is the buffer order (the common case: documents only) ``gather`` is None and
    no rows move; otherwise ``gather`` puts buffer rows in work order and ``scatter`` puts the
    outputs back, one index_select each instead of per-ring index building in every layer.
    ``timeout_s`` is how long ring transfers wait for a peer (None: no deadline of our own).
    """

    def __init__(self, layout: AttentionLayout, device: torch.device, *, timeout_s: float | None = 60.0) -> None:
        self.layout = layout
        self.timeout_s = timeout_s
        self.docs = PackedDocs(layout.doc_cu_seqlens)
        self.rings = tuple(RingContext(slot, layout.mb_index, timeout_s) for slot in layout.rings)
        ranges = [(d.start, d.end) for d in layout.docs] + [(p.start, p.end) for s in layout.rings for p in s.pieces]
        in_order = all(a == b for (_, b), (a, _) in zip(ranges, ranges[1:])) and (not ranges or ranges[0][0] == 0)
        self.gather: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None
        if not in_order:
            rows = torch.cat([torch.arange(a, b) for a, b in ranges])  # [T] buffer row of each work row
            self.gather = rows.to(device)
            self.scatter = torch.argsort(rows).to(device)


def hdp_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: MicroBatchAttention, *, scale: float | None = None,
) -> torch.Tensor:
    """Causal attention for the micro-batch ``batch`` describes.

    q [T, Hq, D], k/v [T, Hkv, D] (Hq a multiple of Hkv) are the packed buffer's rows, positions
    already applied (RoPE). Returns out [T, Hq, D], differentiable w.r.t. q, k and v. Ring members
    must call this for the same micro-batch (the plan guarantees they reach it in the same order);
    a peer that does not answer within ``batch.timeout_s`` raises ``RingTimeoutError``.
    """
    layout = batch.layout
    if q.shape[0] != layout.num_tokens or k.shape[0] != layout.num_tokens or v.shape != k.shape:
        raise ValueError(
            f"micro-batch {layout.mb_index} of rank {layout.rank} has {layout.num_tokens} tokens; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
    if batch.gather is not None:
        q, k, v = (x.index_select(0, batch.gather) for x in (q, k, v))
    n = batch.docs.num_tokens
    outs = [doc_attention(q[:n], k[:n], v[:n], batch.docs, scale)[0]] if n or not batch.rings else []
    for ring in batch.rings:  # ring-id order, as built by build_layout
        m = ring.slot.num_tokens
        # A member with no tokens still runs (zero rows): the ring's output must stay in the
        # autograd graph, or its backward would never run and its peers would wait.
        outs.append(ring_attention(q[n:n + m], k[n:n + m], v[n:n + m], ring, scale))
        n += m
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out if batch.scatter is None else out.index_select(0, batch.scatter)
