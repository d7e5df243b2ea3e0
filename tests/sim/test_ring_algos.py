"""Exposed ring communication of one micro-batch, per ring algorithm, against sums written out by
hand from the link figures (a simulator that ignores the algorithm or the placement fails)."""

from __future__ import annotations

import math

import pytest

from hdp.plan import build_cost_model
from hdp.plan.draft import Draft
from hdp.plan.topology import Topology
from hdp.sim import Cluster
from hdp.sim.microbatch import MicroBatchTimer

COST = build_cost_model("llama-7b")
M = COST.model
L = 2**15  # 32K tokens
NV, NIC = 10e9, 1e9  # slow links: transfers dominate, so every algorithm exposes something
NV_LAT, NIC_LAT = 3e-6, 7e-6
CLUSTER = Cluster(16, gpus_per_node=4, nvlink_gbps=10, inter_gbps=1, nvlink_latency_s=NV_LAT, inter_latency_s=NIC_LAT)


def exposed(algo: str, members: list[int]) -> float:
    draft = Draft([L], 16, L)
    g = draft.new_ring(0, members)
    for r in members:
        draft.ranks[r].append(draft.ring_micro_batch([g]))
    plan = draft.finish("test", COST, topology=Topology(4, algo, 10, 1, NV_LAT, NIC_LAT, M.num_kv_heads))
    assert plan.rings[0].algo == algo
    t = MicroBatchTimer(plan, COST, CLUSTER)(plan.ranks[members[0]].micro_batches[0])
    assert t.ring_by == ((algo, len(members), t.ring_comm_s),)
    return t.ring_comm_s


def by_hand(k: int) -> tuple[float, float, float]:
    """(K/V bytes a member sends per step, forward and backward attention of one block step)."""
    kv = (L / k) * 2 * (M.num_kv_heads * M.hidden_size // M.num_heads) * 2  # K and V, bf16
    attn = COST.attn_layer_time(L, doc_len=L / (2 * k)) / k / k  # one member's layer, one of k blocks
    return kv, _fwd_share() * attn, (1 - _fwd_share()) * attn


def _fwd_share() -> float:
    from hdp.plan.cost import ATTN_FWD_SHARE
    return ATTN_FWD_SHARE


def pos(x: float) -> float:
    return max(0.0, x)


def test_flat_ring_inside_one_node_runs_at_nvlink_speed():
    kv, f, b = by_hand(4)
    want = COST.layers * 3 * (pos(NV_LAT + kv / NV - f) + pos(NV_LAT + 2 * kv / NV - b))
    assert want > 0
    assert math.isclose(exposed("flat", [0, 1, 2, 3]), want, rel_tol=1e-12)


def test_flat_ring_across_nodes_waits_for_one_nic_every_step():
    kv, f, b = by_hand(8)
    want = COST.layers * 7 * (pos(NIC_LAT + kv / NIC - f) + pos(NIC_LAT + 2 * kv / NIC - b))
    assert math.isclose(exposed("flat", list(range(8))), want, rel_tol=1e-12)
    # Spanning 4 nodes instead of 2 changes nothing for a flat ring: one NIC carries each step.
    assert math.isclose(exposed("flat", [0, 1, 4, 5, 8, 9, 12, 13]), want, rel_tol=1e-12)


def test_bidirectional_ring_moves_half_the_bytes_each_way():
    kv, f, b = by_hand(8)
    want = COST.layers * 7 * (pos(NIC_LAT + kv / 2 / NIC - f) + pos(NIC_LAT + kv / NIC - b))
    assert math.isclose(exposed("bidirectional", list(range(8))), want, rel_tol=1e-12)


@pytest.mark.parametrize("members,m,g", [(list(range(8)), 2, 4), ([0, 1, 4, 5, 8, 9, 12, 13], 4, 2)])
def test_two_level_ring_hides_each_outer_step_under_a_round_of_g_blocks(members, m, g):
    kv, f, b = by_hand(8)
    total = 0.0
    for num_bytes, blk in ((kv, f), (2 * kv, b)):
        inner = pos(NV_LAT + num_bytes / NV - blk)
        round_s = g * blk + (g - 1) * inner
        outer = pos(NIC_LAT + num_bytes / NIC - round_s)
        total += m * (g - 1) * inner + (m - 1) * outer
    got = exposed("two-level", members)
    assert math.isclose(got, COST.layers * total, rel_tol=1e-12)
    assert got < exposed("bidirectional", list(range(8))) < exposed("flat", list(range(8)))


def test_two_level_on_uneven_nodes_falls_back_to_flat():
    draft = Draft([L], 16, L)
    g = draft.new_ring(0, [0, 1, 2, 4, 5, 6, 7])  # 3 + 4 members
    for r in draft.ring_ranks[g]:
        draft.ranks[r].append(draft.ring_micro_batch([g]))
    plan = draft.finish("test", COST, topology=Topology(4, "two-level"))
    assert plan.rings[0].algo == "flat" and plan.gpus_per_node == 4
