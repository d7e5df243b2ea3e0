"""The simulator's own kernel-time model of a micro-batch: ring attention priced as the tiles the
zig-zag kernels compute, not as the planner's causal documents.

The planner (``CostModel.seq_time``) prices a ring member's attention as 1/k of the sequence's
causal attention at the efficiency of a causal document of L/(2k) tokens. The runtime
(``hdp.runtime.attention.ring.blocks``) does something else: member i holds zig-zag pieces i and
2k-1-i of p = L/(2k) tokens each, and a step runs one kernel per visible (query piece, key piece)
pair (``visible_pairs``):

* the local step (the member's own block): two causal p x p pairs (the diagonals) and one full
  p x p pair (its late piece against its early one);
* each of the other k-1 steps: two full p x p pairs (the block is entirely before one of the
  member's pieces and entirely after the other).

The FLOPs add up to the planner's (1/k of the causal attention); the efficiency does not. A causal
pair is a causal document of p tokens: ``attn_efficiency(p)``. A full p x p pair computes p^2
scores, as many as a causal document of sqrt(2) p tokens, and is priced at that document's
calibrated efficiency (an equal-work rule: the calibration measures causal and document-masked
kernels only). So a full pair runs faster per FLOP than the planner assumes, and ring blocks are
cheaper in the simulator than in the planner's estimate.

Everything else of a micro-batch (GEMMs, whole sequences, the per-layer overhead) is the cost
model's, term for term, so a micro-batch without rings is timed exactly as the planner times it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hdp.plan.cost.cost_model import ATTN_FWD_SHARE, LINEAR_FWD_SHARE, CostModel
from hdp.plan.estimate import micro_batch_time
from hdp.plan.types import MicroBatch, Plan


@dataclass(frozen=True, slots=True)
class RingTiles:
    """Fwd+bwd attention seconds of one member of a k-ring, one layer: its local step and each other step."""

    local_s: float
    other_s: float
    k: int

    @property
    def layer_s(self) -> float:
        """All k steps of one layer."""
        return self.local_s + (self.k - 1) * self.other_s

    @property
    def step_s(self) -> float:
        """Mean step: what a transfer overlaps (``hdp.plan.cost.ringcomm``'s ``blk``)."""
        return self.layer_s / self.k


def pair_time(cost: CostModel, q: float, kv: float, causal: bool) -> float:
    """Fwd+bwd seconds of one pair kernel: q queries against kv keys (causal: a diagonal, q == kv)."""
    m = cost.model
    if causal:
        flops, doc = m.attention_flops_fwd(q), q
    else:
        flops, doc = 2.0 * m.attention_flops_fwd(math.sqrt(q * kv)), math.sqrt(2.0 * q * kv)
    return 3.5 * flops / cost.tp / (cost.device.attn_efficiency(doc) * 1e12)


def ring_tiles(cost: CostModel, length: int, k: int) -> RingTiles:
    """One member's per-layer attention of a k-ring over ``length`` tokens, by zig-zag tiles."""
    p = length / (2 * k)
    full, diag = pair_time(cost, p, p, False), pair_time(cost, p, p, True)
    return RingTiles(local_s=2 * diag + full, other_s=2 * full, k=k)


def recomputed(cost: CostModel, attn: float, linear: float) -> float:
    """``CostModel._recomputed``: fwd+bwd, plus the forward again under ``recompute full``."""
    if cost.recompute == "full":
        return attn * (1 + ATTN_FWD_SHARE) + linear * (1 + LINEAR_FWD_SHARE)
    return attn + linear


@dataclass(frozen=True, slots=True)
class KernelTime:
    compute_s: float
    """The micro-batch's compute, all layers of the rank, fwd+bwd."""
    ring_attn_s: float
    """The ring attention part of ``compute_s`` (what a ring's lockstep steps cost)."""
    tiles: tuple[tuple[int, RingTiles], ...]
    """(ring index, its tiles) of every ring of the micro-batch."""


def micro_batch_kernels(plan: Plan, mb: MicroBatch, cost: CostModel) -> KernelTime:
    """Compute of one micro-batch: the cost model's terms, ring attention replaced by tiles."""
    if not mb.rings:
        return KernelTime(micro_batch_time(plan, mb, cost), 0.0, ())
    ring_of_seq = {plan.rings[g].seq: g for g in mb.rings}
    sizes = [plan.rings[g].size for g in mb.rings]
    t = cost.micro_batch_overhead(max(sizes))
    ring_attn = 0.0
    tiles = []
    factor = 1 + ATTN_FWD_SHARE if cost.recompute == "full" else 1.0
    for seq, g in ring_of_seq.items():
        k, length = plan.rings[g].size, plan.sequences[seq].length
        if k <= 1:
            t += cost.seq_time(length, k)
            continue
        rt = ring_tiles(cost, length, k)
        tiles.append((g, rt))
        t += cost.layers * recomputed(cost, rt.layer_s, cost.linear_layer_time(length / k))
        ring_attn += cost.layers * factor * rt.layer_s
    for s in mb.segments:
        if s.seq not in ring_of_seq:
            t += cost.seq_time(s.num_tokens)
    return KernelTime(t, ring_attn, tuple(tiles))
