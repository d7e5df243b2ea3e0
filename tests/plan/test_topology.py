"""Node-aware ring placement (hdp.plan.cost.topology) and plans made with a topology: rings inside a
node when one has room, no lone member of a multi-node ring, the algorithm recorded, plans valid."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hdp.plan import Plan, get_strategy, make_plan
from hdp.plan.planner import place_all, plan_placed
from hdp.plan.schedule.whole_nodes import round_up
from hdp.plan.cost.topology import Topology, pick_members, ring_algo_for
from hdp.plan.validate import violations
from hdp.plan.zigzag import max_member_tokens

from .conftest import COST, COST_7B, batches
from .test_rules import fits


def per_node(members, rpn):
    return Counter(r // rpn for r in members)


def test_small_ring_goes_inside_the_best_fitting_node():
    topo = Topology(8)
    free = list(range(8)) + [13, 14, 15] + [20, 21, 22, 23, 24]  # node 0 whole, node 1: 3 free, node 2: 5
    assert pick_members(free, 3, topo) == [13, 14, 15]
    assert pick_members(free, 4, topo) == [20, 21, 22, 23]
    assert pick_members(free, 6, topo) == list(range(6))


def test_large_ring_takes_whole_nodes_first_then_its_remainder_on_one_node():
    topo = Topology(8)
    free = list(range(24)) + [26, 27, 28, 29]  # 3 whole nodes, node 3 has 4 free
    got = pick_members(free, 20, topo)
    assert per_node(got, 8) == {0: 8, 1: 8, 3: 4}


@settings(max_examples=200, deadline=None)
@given(nodes=st.integers(1, 6), rpn=st.integers(2, 8), data=st.data())
def test_on_free_nodes_no_node_holds_a_single_member(nodes, rpn, data):
    k = data.draw(st.integers(2, nodes * rpn))
    assume(rpn > 2 or k % 2 == 0)  # nodes of 2 cannot hold an odd ring without a lone member
    algo = data.draw(st.sampled_from(["flat", "two-level", "bidirectional"]))
    got = pick_members(list(range(nodes * rpn)), k, Topology(rpn, algo))
    assert len(got) == k and got == sorted(set(got))
    counts = per_node(got, rpn)
    if k <= rpn:
        assert len(counts) == 1
    assert min(counts.values()) >= 2


def test_two_level_gets_equal_members_per_node_when_a_divisor_fits():
    topo = Topology(8, "two-level")
    got = pick_members(list(range(32)), 12, topo)
    assert set(per_node(got, 8).values()) == {6}
    assert ring_algo_for(got, topo) == "two-level"
    assert ring_algo_for(list(range(8)), topo) == "flat"  # one node: the inner ring is the ring
    assert ring_algo_for([0, 8], topo) == "flat"  # one member per node: a flat ring over nodes
    assert ring_algo_for([0, 1], Topology(8, "bidirectional", kv_heads=1)) == "flat"


@pytest.mark.parametrize("strategy", ["hdp", "hdp-naive", "hdp-wide", "static", "pow2"])
@pytest.mark.parametrize("algo", ["flat", "two-level", "bidirectional"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), rpn=st.sampled_from([2, 3, 4, 8]), big=st.booleans())
def test_plans_with_a_topology_obey_the_rules(strategy, algo, batch, rpn, big):
    lengths, ranks, capacity = batch
    assume(fits(strategy, lengths, ranks, capacity))
    cost = COST_7B if big else COST
    topo = Topology(rpn, algo, kv_heads=cost.model.num_kv_heads)
    plan = make_plan(lengths, ranks, capacity, cost, strategy, topology=topo)
    assert violations(plan) == []
    assert plan.gpus_per_node == rpn
    for ring in plan.rings:
        assert list(ring.ranks) == sorted(ring.ranks)  # node by node, local index within a node
        assert ring.algo == ring_algo_for(ring.ranks, topo)
        assert ring.algo in ("flat", algo)
    assert Plan.from_json(plan.to_json()) == plan
    assert make_plan(lengths, ranks, capacity, cost, strategy, topology=topo).to_json() == plan.to_json()


def test_without_a_topology_plans_are_unchanged_and_the_scheduler_places_rings_by_node():
    lengths = [40_000, 30_000] + [3_000] * 40
    plain = make_plan(lengths, 16, 10_000, COST_7B, "hdp")
    assert plain.gpus_per_node == 0 and all(r.algo == "flat" for r in plain.rings)
    assert "gpus_per_node" not in plain.to_json()
    topo = make_plan(lengths, 16, 10_000, COST_7B, "hdp", topology=Topology(4, "two-level"))
    for ring in topo.rings:
        counts = per_node(ring.ranks, 4)
        assert ring.size > 4 or len(counts) == 1
        assert min(counts.values()) >= 2
    assert topo.predicted_step_time_s >= plain.predicted_step_time_s * 0.5


def test_two_level_rings_wider_than_a_node_take_whole_nodes():
    lengths = [90_000, 45_000] + [3_000] * 40  # fewest ranks: 9 and 5 at C = 10,000
    placements = place_all(lengths, 32, 10_000, COST_7B, get_strategy("hdp-balance"))
    aligned = round_up(lengths, placements, 32, Topology(4, "two-level"))
    assert [p.ranks for p in placements[:2]] == [9, 5] and [p.ranks for p in aligned[:2]] == [12, 8]
    assert round_up(lengths, placements, 32, Topology(4, "flat")) == placements
    plan = plan_placed(lengths, aligned, 32, 10_000, COST_7B, get_strategy("hdp-wide"),
                       topology=Topology(4, "two-level"))
    assert all(r.algo == "two-level" for r in plan.rings if r.size > 4)
    assert "fewest_ranks" not in plan.extra and violations(plan) == []


def test_hdp_keeps_the_fewest_ranks_with_two_level_rings():
    """Rule 4 holds for strategy hdp whatever the topology: no rounding up to whole nodes."""
    lengths = [90_000, 45_000] + [3_000] * 40
    plan = make_plan(lengths, 32, 10_000, COST_7B, "hdp-balance", topology=Topology(4, "two-level"))
    assert {r.seq: r.size for r in plan.rings} == {0: 9, 1: 5} and plan.extra.get("fewest_ranks")
    hdp = make_plan(lengths, 32, 10_000, COST_7B, "hdp", topology=Topology(4, "two-level"))
    assert violations(hdp) == []  # the validator checks rule 4 for strategy hdp


def test_whole_node_rings_grow_until_every_zigzag_member_fits():
    """35 tokens at capacity 5 need 7 ranks; 4 nodes of 2 would give a member 6 tokens (floor cuts),
    so the two-level ring takes the next multiple of the node that fits, or stays at 7."""
    topo = Topology(2, "two-level", kv_heads=COST.model.num_kv_heads)
    placements = place_all([35], 8, 5, COST, get_strategy("hdp-wide"))
    assert [p.ranks for p in round_up([35], placements, 8, topo)] == [7]
    assert [p.ranks for p in round_up([35], placements, 12, topo)] == [10]  # 8 would give one 6
    plan = make_plan([35], 8, 5, COST, "hdp-wide", topology=topo)
    assert violations(plan) == []
    assert all(mb.num_tokens <= 5 for rp in plan.ranks for mb in rp.micro_batches)


def test_hdp_takes_whole_nodes_by_offloading_one_layer_and_keeps_rule_4():
    """165,000 tokens need 17 ranks at C = 10,000 (prime: no two-level layout, a flat ring over 3
    nodes); one offloaded layer holds them on 16 = 2 nodes x 8, and the token limit is the largest
    member's tokens, so 16 is the fewest ranks for it."""
    lengths = [165_000] + [3_000] * 100
    topo = Topology(8, "two-level", kv_heads=COST_7B.model.num_kv_heads)
    plan = make_plan(lengths, 64, 10_000, COST_7B, "hdp", topology=topo)
    (ring,) = [r for r in plan.rings if r.seq == 0]
    held = {(mb.offload_layers, mb.token_limit) for rp in plan.ranks for mb in rp.micro_batches if ring.id in mb.rings}
    assert ring.size == 16 and ring.algo == "two-level"
    assert held == {(1, max_member_tokens(165_000, 16))} and max_member_tokens(165_000, 16) == 10_313
    assert violations(plan) == [] and plan.extra.get("fewest_ranks")  # rule 4, checked exactly
    flat = make_plan(lengths, 64, 10_000, COST_7B, "hdp", topology=Topology(8, "flat"))
    assert {r.seq: r.size for r in flat.rings}[0] == 17
    assert plan.predicted_step_time_s < flat.predicted_step_time_s
