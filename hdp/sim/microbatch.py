"""Time of one micro-batch on one HDP rank (one pipeline stage): compute and exposed communication.

* Compute: the simulator's kernel model (``kernels.py``): the cost model's terms, with ring attention
  priced as the zig-zag tiles the kernels compute (already divided by tp).
* Tensor parallelism: 2 all-reduces forward and 2 backward per layer of the micro-batch's
  activations (tokens x h, bf16), not overlapped (Megatron without comm/compute overlap).
* Ring attention: per layer a ring of k members runs k block steps forward and k backward. While
  block i is computed, block i+1's K/V arrive from the neighbour (forward: tokens_per_member *
  2 * kv_dim * 2 bytes; backward: K/V plus dK/dV, twice that). Each of the k-1 transfer steps
  exposes max(0, transfer - block compute). Rings of one micro-batch with the same size share the
  steps (a static CP group runs one ring over its packed buffer: transfers and compute add up).
  How a step's transfer is carried depends on the ring's ``algo`` and placement
  (``hdp.plan.cost.ringcomm``: flat, bidirectional, two-level; NVLink inside a node, NICs across);
  a step's block time is the mean of the member's tile steps.
* Offloading: the micro-batch's ``offload_layers`` copy activations to the host during the
  forward and back during the backward; only a copy longer than the compute it overlaps is
  exposed. Timed here on the GPU's own lane; ``training_step`` then shares the lane's PCIe link
  and the node's host memory (``contention.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from hdp.plan.cost.cost_model import ATTN_FWD_SHARE, LINEAR_FWD_SHARE, CostModel
from hdp.plan.estimate import ring_key
from hdp.plan.cost.ringcomm import Links, exposed_ring
from hdp.plan.schedule.sharding import num_offload_layers
from hdp.plan.types import MicroBatch, Plan
from hdp.sim.cluster import Cluster
from hdp.sim.kernels import micro_batch_kernels

BF16 = 2


@dataclass(frozen=True, slots=True)
class MicroBatchTime:
    compute_s: float
    ring_comm_s: float
    """Exposed ring-attention transfer time."""
    tp_comm_s: float
    offload_s: float
    """Exposed offload copy time."""
    ring_by: tuple[tuple[str, int, float], ...] = ()
    """``ring_comm_s`` split by (ring algo, ring size)."""
    ring_attn_s: float = 0.0
    """The ring attention part of ``compute_s``."""
    tiles: tuple = ()
    """(ring index, ``kernels.RingTiles``) of the micro-batch's rings, for the noise model."""
    sync_wait_s: float = 0.0
    """Waiting inside a ring micro-batch for a member whose noisy compute is slower (``training_step``)."""

    @property
    def comm_s(self) -> float:
        return self.ring_comm_s + self.tp_comm_s + self.offload_s

    @property
    def total_s(self) -> float:
        return self.compute_s + self.comm_s + self.sync_wait_s


class MicroBatchTimer:
    """Times micro-batches of one plan; identical ring micro-batches (all members of a static CP
    group) are computed once."""

    def __init__(self, plan: Plan, cost: CostModel, cluster: Cluster) -> None:
        self.plan, self.cost, self.cluster = plan, cost, cluster
        self._ring_cache: dict[tuple, MicroBatchTime] = {}
        self._shapes = [_shape(cluster, r.ranks) for r in plan.rings]
        self._link = Links(cluster.nvlink_gbps * 1e9, cluster.inter_gbps * 1e9, cluster.nvlink_latency_s,
                           cluster.inter_latency_s)
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
        kern = micro_batch_kernels(plan, mb, cost)
        compute = kern.compute_s
        # Rings grouped by (size, algo, nodes, per node): kv bytes per step, fwd / bwd attention per step.
        groups: dict[tuple[int, str, int, int], list[float]] = {}
        for g, tiles in kern.tiles:
            ring = plan.rings[g]
            k, length = ring.size, plan.sequences[ring.seq].length
            acc = groups.setdefault((k, ring.algo, *self._shapes[g]), [0.0, 0.0, 0.0])
            acc[0] += length / k * self._kv_bytes_per_token
            acc[1] += ATTN_FWD_SHARE * tiles.step_s
            acc[2] += (1 - ATTN_FWD_SHARE) * tiles.step_s
        by: dict[tuple[str, int], float] = {}
        for (k, algo, nodes, per_node), (kv, fwd, bwd) in groups.items():
            t = layers * exposed_ring(algo, k, nodes, per_node, kv, fwd, bwd, self._link)
            by[(algo, k)] = by.get((algo, k), 0.0) + t
        ring_comm = sum(by.values())
        tp_comm = layers * 4 * self.cluster.tp_all_reduce(mb.num_tokens * self._act_bytes_per_token)
        act = self.offload_bytes(mb)
        dev = cost.device
        offload = offload_exposed(act, compute, self._fwd_share, dev.d2h_gbps, dev.h2d_gbps) if act else 0.0
        return MicroBatchTime(compute, ring_comm, tp_comm, offload, tuple((a, k, t) for (a, k), t in sorted(by.items())),
                              kern.ring_attn_s, kern.tiles)

    def offload_bytes(self, mb: MicroBatch) -> float:
        """Activation bytes the micro-batch copies to the host (and back), per GPU."""
        layers = self.cost.layers
        # Plans written before offload_layers existed carry only the ratio.
        copied_layers = mb.offload_layers or num_offload_layers(mb.offload_ratio, layers)
        if copied_layers and layers > 2:
            return copied_layers * self.cost.act_bytes(mb.num_tokens)
        return 0.0

    def kv_bytes(self, ring: int) -> float:
        """One member's K/V block of ring ``ring`` (forward; the backward sends twice that)."""
        r = self.plan.rings[ring]
        return self.plan.sequences[r.seq].length / r.size * self._kv_bytes_per_token

    @property
    def fwd_share(self) -> float:
        return self._fwd_share


def offload_exposed(act: float, compute: float, fwd_share: float, d2h_gbps: float, h2d_gbps: float) -> float:
    """Exposed copy seconds: d2h under the forward, h2d under the backward, at these rates."""
    fwd_compute = fwd_share * compute
    offload = max(0.0, act / (d2h_gbps * 1e9) - fwd_compute)
    return offload + max(0.0, act / (h2d_gbps * 1e9) - (compute - fwd_compute))


def _shape(cluster: Cluster, members: tuple[int, ...]) -> tuple[int, int]:
    """(nodes a ring spans, members per node when equal on every node else 0)."""
    counts: dict[int, int] = {}
    for r in members:
        n = cluster.node(r)
        counts[n] = counts.get(n, 0) + 1
    if cluster.gpus_per_rank > cluster.gpus_per_node:  # a rank spans nodes: every hop is inter-node
        return len(members), 1
    values = set(counts.values())
    return len(counts), values.pop() if len(values) == 1 else 0
