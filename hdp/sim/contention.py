"""Offload copies on shared links: each GPU's PCIe link (with its NIC) and each node's host memory.

The planner (``CostModel.max_offload_ratio``) gives every GPU a private copy lane of ``d2h_gbps`` /
``h2d_gbps``. The simulator shares two resources, per micro-batch window:

* **Host memory, per node** (``DeviceProfile.host_mem_gbps``, both directions together): the
  GPUs of a node that copy at the same time share it fairly. A copying micro-batch's concurrency n
  is the time-weighted number of the node's GPUs copying during it (itself included: its rank's
  GPUs on the node, plus each other copying micro-batch's GPUs times the fraction of this window it
  overlaps), taken from the schedule without contention (one refinement pass, not a fixed point).
  Its share is ``host_mem_gbps / n``.
* **The GPU's PCIe link** (``DeviceProfile.pcie_gbps`` per direction) carries the copy and the
  GPU's NIC traffic (GPUDirect RDMA crosses the same link): ring blocks this member sends to
  another node during the window, at their mean rate over the window (at most the NIC's speed). The
  copy gets what the NIC leaves, and at least a fair half of the link when both want more.

A copy's rate is the least of its lane (``d2h_gbps``/``h2d_gbps``), its host share and its PCIe
share; d2h during the forward, h2d during the backward, each hidden under that phase's compute
(``hdp.sim.microbatch``). One GPU copying alone with no NIC traffic gets its lane, as before.
"""

from __future__ import annotations

from dataclasses import replace

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.replay import replay
from hdp.plan.types import Plan
from hdp.sim.cluster import Cluster
from hdp.sim.microbatch import MicroBatchTime, MicroBatchTimer, offload_exposed


def nic_sends(plan: Plan, ring: int, rank: int, cluster: Cluster) -> float:
    """Blocks (in units of one member's K/V block) ``rank`` sends over its NIC per layer and direction."""
    members = plan.rings[ring].ranks
    k = len(members)
    if k <= 1:
        return 0.0
    i = members.index(rank)
    node = cluster.node(rank)
    nodes = {cluster.node(m) for m in members}
    if len(nodes) <= 1 and cluster.gpus_per_rank <= cluster.gpus_per_node:
        return 0.0
    algo = plan.rings[ring].algo
    per_node = k // len(nodes)
    if algo == "two-level" and len(nodes) >= 2 and per_node >= 2 and per_node * len(nodes) == k:
        return float(len(nodes) - 1)  # one outer block per round but the last
    nxt = cluster.node(members[(i + 1) % k]) != node or cluster.gpus_per_rank > cluster.gpus_per_node
    if algo == "bidirectional":
        prv = cluster.node(members[(i - 1) % k]) != node or cluster.gpus_per_rank > cluster.gpus_per_node
        return (k - 1) / 2 * (nxt + prv)
    return float(k - 1) if nxt else 0.0


def copy_rate(lane_gbps: float, host_share_gbps: float, pcie_gbps: float, nic_gbps: float) -> float:
    """GB/s a copy gets: its lane, its host share, the PCIe link less the NIC's rate (>= half the link)."""
    pcie = max(pcie_gbps - nic_gbps, pcie_gbps / 2)
    return min(lane_gbps, host_share_gbps, pcie)


def concurrency(intervals: list[tuple[int, float, float, int]]) -> dict[int, float]:
    """Time-weighted copying GPUs of one node during each copying window.

    ``intervals``: (id, start, end, GPUs of it on this node). Returns id -> n (>= its own GPUs)."""
    out: dict[int, float] = {}
    order = sorted(intervals, key=lambda x: x[1])
    for a, s, e, g in order:
        n = float(g)
        span = e - s
        if span > 0:
            for b, s2, e2, g2 in order:
                if s2 >= e:
                    break
                if b != a and e2 > s:
                    n += g2 * (min(e, e2) - max(s, s2)) / span
        out[a] = n
    return out


def contend(plan: Plan, cost: CostModel, cluster: Cluster, timer: MicroBatchTimer,
            times: list[list[MicroBatchTime]]) -> list[list[MicroBatchTime]]:
    """``times`` with every offloading micro-batch's copies at their shared rates (see the module)."""
    dev = cost.device
    copying = [(r, i, timer.offload_bytes(mb)) for r, rp in enumerate(plan.ranks)
               for i, mb in enumerate(rp.micro_batches)]
    copying = [c for c in copying if c[2] > 0]
    if not copying:
        return times
    rep = replay(plan, [[t.total_s for t in ts] for ts in times])
    by_node: dict[int, list[tuple[int, float, float, int]]] = {}
    on_node = min(cluster.tp, cluster.gpus_per_node)
    for j, (r, i, _) in enumerate(copying):
        start = rep.starts[r][i]
        for stage in range(cluster.pp):
            by_node.setdefault(cluster.node(r, stage), []).append((j * cluster.pp + stage, start,
                                                                   start + times[r][i].total_s, on_node))
    n_eff: dict[int, float] = {}
    for intervals in by_node.values():
        n_eff.update(concurrency(intervals))
    out = [list(ts) for ts in times]
    for j, (r, i, act) in enumerate(copying):
        t = times[r][i]
        n = max(n_eff[j * cluster.pp + s] for s in range(cluster.pp))
        mb = plan.ranks[r].micro_batches[i]
        sends = sum(nic_sends(plan, g, r, cluster) * timer.kv_bytes(g) for g in mb.rings) * cost.layers
        fwd = timer.fwd_share * t.compute_s
        bwd = t.compute_s - fwd
        nic_fwd = min(sends / fwd / 1e9, cluster.inter_gbps) if fwd > 0 else 0.0
        nic_bwd = min(2 * sends / bwd / 1e9, cluster.inter_gbps) if bwd > 0 else 0.0
        share = dev.host_mem_gbps / n
        d2h = copy_rate(dev.d2h_gbps, share, dev.pcie_gbps, nic_fwd)
        h2d = copy_rate(dev.h2d_gbps, share, dev.pcie_gbps, nic_bwd)
        if d2h != dev.d2h_gbps or h2d != dev.h2d_gbps:
            out[r][i] = replace(t, offload_s=offload_exposed(act, t.compute_s, timer.fwd_share, d2h, h2d))
    return out
