"""``hdp-wide`` (hdp.plan.schedule.critical): a sequence that alone would set the step gets more ranks than
the fewest, the target search meets its own conditions, and plans stay valid and never slower by
the estimate than hdp's."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hdp.plan import get_strategy, make_plan
from hdp.plan.schedule.critical import Widening, member_time
from hdp.plan.schedule.sharding import hold
from hdp.plan.planner import place_all
from hdp.plan.schedule.whole_nodes import round_up
from hdp.plan.schedule.sharding import Placement, place
from hdp.plan.cost.topology import Topology
from hdp.plan.validate import violations
from hdp.plan.zigzag import max_member_tokens
from hdp.sim import Cluster, simulate_step

from .conftest import COST, COST_7B, batches
from .test_rules import fits

LENGTHS = [400_000] + [3_000] * 200  # one long sequence sets the step on its fewest ranks (40 of 64)
TOPO = Topology(8, "two-level", kv_heads=COST_7B.model.num_kv_heads)


def test_a_sequence_that_sets_the_step_gets_more_ranks_and_the_step_is_shorter():
    hdp = make_plan(LENGTHS, 64, 10_000, COST_7B, "hdp", topology=TOPO)
    wide = make_plan(LENGTHS, 64, 10_000, COST_7B, "hdp-wide", topology=TOPO)
    assert violations(hdp) == [] and violations(wide) == []
    assert hdp.extra.get("fewest_ranks") and "fewest_ranks" not in wide.extra
    assert wide.max_ring > hdp.max_ring
    assert wide.max_ring % 8 == 0 and all(r.algo == "two-level" for r in wide.rings if r.size > 8)
    assert wide.predicted_step_time_s < 0.9 * hdp.predicted_step_time_s
    cluster = Cluster(64)
    assert simulate_step(wide, COST_7B, cluster).step_time_s < 0.9 * simulate_step(hdp, COST_7B, cluster).step_time_s


def same_layout(a, b) -> bool:
    return (a.rings, a.ranks, a.predicted_step_time_s) == (b.rings, b.ranks, b.predicted_step_time_s)


def test_without_a_topology_or_a_long_sequence_hdp_wide_is_hdp():
    plain = make_plan(LENGTHS, 64, 10_000, COST_7B, "hdp-wide")  # no transfer model: no widening
    assert same_layout(plain, make_plan(LENGTHS, 64, 10_000, COST_7B, "hdp"))
    even = [3_000] * 500  # nothing sets the step
    a = make_plan(even, 64, 10_000, COST_7B, "hdp-wide", topology=TOPO)
    assert same_layout(a, make_plan(even, 64, 10_000, COST_7B, "hdp", topology=TOPO))


def test_the_target_is_the_smallest_that_meets_the_conditions():
    """Checked with member_time directly: each long sequence within T, rank-seconds within N T,
    items over T / 2 side by side within N; 0.5% below T some condition fails."""
    n = 64
    base = round_up(LENGTHS, place_all(LENGTHS, n, 10_000, COST_7B, get_strategy("hdp-wide")), n, TOPO)
    w = Widening(LENGTHS, base, n, 10_000, COST_7B, TOPO)
    target = w.target()
    assert target is not None and w.mean <= target < w.longest
    wide = w.placements_at(target)
    times = [member_time(COST_7B, TOPO, length, p.ranks) for length, p in zip(LENGTHS, wide)]
    widened = [i for i, (a, b) in enumerate(zip(base, wide)) if a.ranks != b.ranks]
    assert widened == [0]
    assert max(times[i] for i in w.long) <= target
    assert sum(p.ranks * t for p, t in zip(wide, times)) <= n * target
    assert sum(p.ranks for p, t in zip(wide, times) if t > target / 2) <= n
    assert w.sizes(target * 0.995) is None


def test_more_ranks_offload_fewer_layers_and_every_member_fits():
    base = place(400_000, 10_000, COST_7B, offload=True)
    assert base.offload_layers > 0
    for k in (base.ranks + 1, 2 * base.ranks, 40, 41):
        p = hold(400_000, k, 10_000, COST_7B, base.offload_layers)
        assert p is not None and p.ranks == k and p.offload_layers <= base.offload_layers
        assert max_member_tokens(400_000, k) <= p.token_limit
    assert hold(400_000, 40, 10_000, COST_7B, base.offload_layers) == Placement(40, 10_000)
    # 35 tokens at capacity 5: 8 members would give one 6 tokens, and the tiny model cannot offload.
    assert hold(35, 8, 5, COST, 0) is None


@pytest.mark.parametrize("algo", ["flat", "two-level", "bidirectional"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), rpn=st.sampled_from([2, 4, 8]))
def test_hdp_wide_plans_are_valid_and_never_predicted_slower_than_hdp(algo, batch, rpn):
    lengths, ranks, capacity = batch
    assume(fits("hdp", lengths, ranks, capacity))
    topo = Topology(rpn, algo, kv_heads=COST_7B.model.num_kv_heads)
    hdp = make_plan(lengths, ranks, capacity, COST_7B, "hdp", topology=topo)
    wide = make_plan(lengths, ranks, capacity, COST_7B, "hdp-wide", topology=topo)
    assert violations(wide) == []
    assert wide.predicted_step_time_s <= hdp.predicted_step_time_s
