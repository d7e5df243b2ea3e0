"""The planner options the simulator added: make_plan(offload_cap=True) and make_plan(widen=True)."""

from __future__ import annotations

from hdp.plan import build_cost_model, make_plan
from hdp.plan.validate import violations
from hdp.sim import Cluster, simulate_step

COST = build_cost_model("llama-7b")
LENGTHS = [400_000] + [3_000] * 400 + [20_000] * 40  # one long sequence, many short ones


def test_offload_cap_keeps_the_long_ring_within_the_bound():
    free = make_plan(LENGTHS, 64, 10_000, COST, strategy="hdp", offload=True, offload_cap=False)
    capped = make_plan(LENGTHS, 64, 10_000, COST, strategy="hdp", offload=True)
    assert violations(free) == [] and violations(capped) == []
    assert capped.max_ring >= free.max_ring
    cl = Cluster(64)
    assert simulate_step(capped, COST, cl).step_time_s <= simulate_step(free, COST, cl).step_time_s


def test_defaults_are_capped_offload_without_widening():
    a = make_plan(LENGTHS, 64, 10_000, COST, strategy="hdp", offload=True)
    b = make_plan(LENGTHS, 64, 10_000, COST, strategy="hdp", offload=True, offload_cap=True, widen=False)
    assert a.fingerprint == b.fingerprint


def test_widen_gives_the_long_ring_more_ranks():
    plan = make_plan(LENGTHS, 64, 10_000, COST, strategy="hdp", widen=True)
    assert plan.strategy == "hdp-wide"
    assert plan.max_ring > 40  # ceil(400K / 10K) = 40 at the fewest
    assert [v for v in violations(plan) if "fewest" not in v.lower()] == []
