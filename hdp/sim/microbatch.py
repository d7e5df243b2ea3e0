"""Time of one micro-batch on one HDP rank (one pipeline stage): compute and exposed communication.

* Compute: the planner's estimate (``hdp.plan.estimate.micro_batch_time``; already divided by tp).
* Tensor parallelism: 2 all-reduces forward and 2 backward per layer of the micro-batch's
  activations (tokens x h, bf16), not overlapped (Megatron without comm/compute overlap).
* Ring attention: per layer a ring of k members runs k block steps forward and k backward. While
  block i is computed, block i+1's K/V arrive from the neighbour (forward: tokens_per_member *
  2 * kv_dim * 2 bytes; backward: K/V plus dK/dV, twice that). Each of the k-1 transfer steps
  exposes max(0, transfer - block compute). Rings of one micro-batch with the same size share the
  steps (a static CP group runs one ring over its packed buffer: transfers and compute add up).
* Offloading: the micro-batch's ``offload_layers`` copy activations to the host during the
  forward and back during the backward on their own copy lane; only a copy longer than the compute
  it overlaps is exposed.
"""

from __future__ import annotations

from dataclasses import dataclass

from hdp.plan.cost import ATTN_FWD_SHARE, LINEAR_FWD_SHARE, CostModel
from hdp.plan.estimate import micro_batch_time, ring_key
from hdp.plan.sharding import num_offload_layers
from hdp.plan.types import MicroBatch, Plan
from hdp.sim.cluster import Cluster

BF16 = 2


@dataclass(frozen=True, slots=True)
class MicroBatchTime:
    compute_s: float
    ring_comm_s: float
    """Exposed ring-attention transfer time."""
    tp_comm_s: float
    offload_s: float
    """Exposed offload copy time."""

    @property
    def comm_s(self) -> float:
        return self.ring_comm_s + self.tp_comm_s + self.offload_s

    @property
    def total_s(self) -> float:
        return self.compute_s + self.comm_s


class MicroBatchTimer:
    """Times micro-batches of one plan; identical ring micro-batches (all members of a static CP
    group) are computed once."""

    def __init__(self, plan: Plan, cost: CostModel, cluster: Cluster) -> None:
        self.plan, self.cost, self.cluster = plan, cost, cluster
        self._ring_cache: dict[tuple, MicroBatchTime] = {}
        self._links = [cluster.ring_link(r.ranks) for r in plan.rings]
        m = cost.model
        self._kv_bytes_per_token = 2 * m.kv_dim * BF16 / cost.tp
        self._act_bytes_per_token = m.hidden_size * BF16  # a TP all-reduce operand (full activation)
        self._fwd_share = (ATTN_FWD_SHARE + LINEAR_FWD_SHARE) / 2

    def __call__(self, mb: MicroBatch) -> MicroBatchTime:
        if mb.rings:
            key = (*ring_key(self.plan, mb), mb.offload_layers, mb.offload_ratio)
            hit = self._ring_cache.get(key)
            if hit is None:
                hit = self._ring_cache[key] = self._time(mb)
            return hit
        return self._time(mb)

    def _time(self, mb: MicroBatch) -> MicroBatchTime:
        cost, plan = self.cost, self.plan
        layers = cost.layers
        compute = micro_batch_time(plan, mb, cost)
        # Rings grouped by size: (kv bytes per step, fwd attention per step, bwd per step, bw, lat).
        groups: dict[int, list[float]] = {}
        for g in mb.rings:
            ring = plan.rings[g]
            k, length = ring.size, plan.sequences[ring.seq].length
            attn = cost.attn_layer_time(length, doc_len=length / (2 * k)) / k  # this member, one layer
            bw, lat = self._links[g]
            acc = groups.setdefault(k, [0.0, 0.0, 0.0, float("inf"), 0.0])
            acc[0] += length / k * self._kv_bytes_per_token
            acc[1] += ATTN_FWD_SHARE * attn / k
            acc[2] += (1 - ATTN_FWD_SHARE) * attn / k
            acc[3] = min(acc[3], bw)
            acc[4] = max(acc[4], lat)
        ring_comm = 0.0
        for k, (kv, fwd, bwd, bw, lat) in groups.items():
            step_f = max(0.0, lat + kv / bw - fwd)
            step_b = max(0.0, lat + 2 * kv / bw - bwd)
            ring_comm += layers * (k - 1) * (step_f + step_b)
        tp_comm = layers * 4 * self.cluster.tp_all_reduce(mb.num_tokens * self._act_bytes_per_token)
        offload = 0.0
        # Plans written before offload_layers existed carry only the ratio.
        copied_layers = mb.offload_layers or num_offload_layers(mb.offload_ratio, layers)
        if copied_layers and layers > 2:
            dev = cost.device
            act = copied_layers * cost.act_bytes(mb.num_tokens)
            fwd_compute = self._fwd_share * compute
            offload = max(0.0, act / (dev.d2h_gbps * 1e9) - fwd_compute)
            offload += max(0.0, act / (dev.h2d_gbps * 1e9) - (compute - fwd_compute))
        return MicroBatchTime(compute, ring_comm, tp_comm, offload)
