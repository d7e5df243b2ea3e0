"""``hdp_attention``: the one attention call the model makes per layer, for one micro-batch's packed buffer.

Whole sequences run document-masked causal attention locally; each ring's pieces run ring attention
with the ring's members (by the ring's algorithm: flat, two-level or bidirectional), rings in ring-id order (the same order on every member: no deadlock
without barriers). Outputs are reassembled in buffer order, so the caller sees one [T, Hq, D] tensor.

What only depends on the micro-batch (the row order, cu_seqlens on the device, block masks, ring
peers, timeout and transfer buffers) is a ``MicroBatchAttention``, built once per micro-batch with
its layout and passed down to every layer: L layers share one set of metadata.
"""

from __future__ import annotations

import torch

from hdp.runtime.attention.doc_attention import PackedDocs, doc_attention
from hdp.runtime.attention.layout import AttentionLayout
from hdp.runtime.attention.ring.flat import RingContext, ring_attention
from hdp.runtime.attention.ring.bidirectional import bidirectional_ring_attention
from hdp.runtime.attention.ring.two_level import two_level_ring_attention

RING_ATTENTION = {"flat": ring_attention, "two-level": two_level_ring_attention,
                  "bidirectional": bidirectional_ring_attention}
"""Ring attention by algorithm (``RingContext.algo`` picks: the plan's, where the ring can run it)."""


class MicroBatchAttention:
    """One micro-batch's attention metadata on one rank, shared by every layer.

    Work order: the whole documents packed back to back, then each ring's two pieces in ring-id
    order. When that is the buffer order (the common case: documents only) no rows move; otherwise
    the buffer is split into its pieces and concatenated in work order, and the outputs back (split
    and cat: no index tensors, and on CPU twice as fast as an index_select and its scatter-add
    backward, four times as fast as advanced indexing). The piece orders are computed here, once.
    ``timeout_s`` is how long ring transfers wait for a peer (None: no deadline of our own).
    """

    def __init__(self, layout: AttentionLayout, *, timeout_s: float | None = 60.0) -> None:
        self.layout = layout
        self.timeout_s = timeout_s
        self.docs = PackedDocs(layout.doc_cu_seqlens)
        self.rings = tuple(RingContext(slot, layout.mb_index, timeout_s) for slot in layout.rings)
        ranges = [(d.start, d.end) for d in layout.docs] + [(p.start, p.end) for s in layout.rings for p in s.pieces]
        # Pieces tile the buffer (an empty ring piece sits, with no rows, next to its partner).
        order = sorted(range(len(ranges)), key=lambda i: ranges[i])  # work pieces in buffer order
        self.reorder = order != list(range(len(ranges)))
        self.work_sizes = [b - a for a, b in ranges]
        self.buffer_sizes = [self.work_sizes[i] for i in order]
        self.to_buffer = order  # buffer piece j is work piece order[j]
        self.to_work = sorted(range(len(order)), key=order.__getitem__)  # work piece i is buffer piece to_work[i]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Buffer rows -> work order."""
        chunks = x.split(self.buffer_sizes)
        return torch.cat([chunks[j] for j in self.to_work])

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """Work order -> buffer rows."""
        chunks = x.split(self.work_sizes)
        return torch.cat([chunks[i] for i in self.to_buffer])


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
    if batch.reorder:
        q, k, v = (batch.gather(x) for x in (q, k, v))
    n = batch.docs.num_tokens
    outs = [doc_attention(q[:n], k[:n], v[:n], batch.docs, scale)[0]] if n or not batch.rings else []
    for ring in batch.rings:  # ring-id order, as built by build_layout
        m = ring.slot.num_tokens
        # A member with no tokens still runs (zero rows): the ring's output must stay in the
        # autograd graph, or its backward would never run and its peers would wait.
        ring.ran = ring.algo(k.shape[1])
        outs.append(RING_ATTENTION[ring.ran](q[n:n + m], k[n:n + m], v[n:n + m], ring, scale))
        n += m
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return batch.scatter(out) if batch.reorder else out
