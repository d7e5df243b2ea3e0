"""Exposed ring-attention transfer time, per ring algorithm and placement (one formula for the
planner's cost model and the simulator).

A ring of k members runs, per layer and direction (forward, backward), k block computations of
``blk`` seconds; while a block computes the next one's K/V (``kv`` bytes; backward: K/V and dK/dV,
``2 kv``) arrive. A transfer step exposes ``max(0, lat + bytes / bw - blk)``.

* ``flat``: one ring over all members, k - 1 transfer steps. Inside one node every hop is NVLink;
  across nodes the boundary hop is carried by one NIC per node (every step waits for it), so the
  step runs at the NIC's speed however many nodes the ring spans.
* ``bidirectional``: half the KV heads rotate each way; each direction uses its own links (links
  are full duplex), so a step moves half the bytes: k - 1 steps of ``bytes / 2``.
* ``two-level`` (m nodes x g members): m rounds; in a round the inner ring makes g - 1 NVLink steps
  while every member's NIC carries one block to the same local index on the next node (all g NICs
  at once), hidden under the round's g blocks: m (g - 1) inner steps + (m - 1) outer steps of
  ``max(0, lat + bytes / bw_nic - round)``, round = g blk + its exposed inner steps.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Links:
    """Per-GPU, per-direction link speeds (bytes/s) and per-message latencies (s)."""

    nvlink_bps: float
    inter_bps: float
    nvlink_lat: float
    inter_lat: float


def _step(lat: float, num_bytes: float, bw: float, blk: float) -> float:
    return max(0.0, lat + num_bytes / bw - blk)


def exposed_one_way(algo: str, k: int, nodes: int, per_node: int, num_bytes: float, blk: float, links: Links) -> float:
    """Exposed transfer seconds of one layer in one direction (forward or backward) for one member.

    ``nodes`` is how many nodes the ring spans; ``per_node`` its members per node (two-level only)."""
    if k <= 1:
        return 0.0
    if nodes <= 1:
        bw, lat = links.nvlink_bps, links.nvlink_lat
    else:
        bw, lat = links.inter_bps, links.inter_lat
    if algo == "bidirectional":
        return (k - 1) * _step(lat, num_bytes / 2, bw, blk)
    if algo == "two-level" and nodes >= 2 and per_node >= 2:
        m, g = nodes, per_node
        inner = _step(links.nvlink_lat, num_bytes, links.nvlink_bps, blk)
        round_s = g * blk + (g - 1) * inner
        outer = max(0.0, links.inter_lat + num_bytes / links.inter_bps - round_s)
        return m * (g - 1) * inner + (m - 1) * outer
    return (k - 1) * _step(lat, num_bytes, bw, blk)


def exposed_ring(algo: str, k: int, nodes: int, per_node: int, kv_bytes: float, fwd_blk: float, bwd_blk: float,
                 links: Links) -> float:
    """Exposed seconds of one layer, forward (K/V) plus backward (K/V and dK/dV), for one member."""
    return (exposed_one_way(algo, k, nodes, per_node, kv_bytes, fwd_blk, links)
            + exposed_one_way(algo, k, nodes, per_node, 2 * kv_bytes, bwd_blk, links))


BF16 = 2


def links_of(topo) -> Links:
    """``Links`` of a ``hdp.plan.cost.topology.Topology`` (GB/s -> bytes/s)."""
    return Links(topo.nvlink_gbps * 1e9, topo.inter_gbps * 1e9, topo.nvlink_latency_s, topo.inter_latency_s)


def member_exposure_s(cost, length: int, k: int, algo: str, nodes: int, per_node: int, links: Links) -> float:
    """Exposed ring transfer of one member of a ring over a sequence, all layers of the rank, fwd+bwd:
    the cost-model side of the simulator's ring model (``hdp.sim.microbatch``), one ring alone."""
    if k <= 1:
        return 0.0
    from hdp.plan.cost.cost_model import ATTN_FWD_SHARE

    attn = cost.attn_layer_time(length, doc_len=length / (2 * k)) / k
    kv = length / k * 2 * cost.model.kv_dim * BF16 / cost.tp
    return cost.layers * exposed_ring(algo, k, nodes, per_node, kv, ATTN_FWD_SHARE * attn / k,
                                      (1 - ATTN_FWD_SHARE) * attn / k, links)
