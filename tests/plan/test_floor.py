"""``joint_floor``: below every strategy's predicted step time, above the area floor, and equal to
the same relaxation computed without pruning; the lemmas of its proof (docs/plan-format.md)."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdp.plan import STRATEGIES, PlanError, build_cost_model, make_plan
from hdp.plan.cost.ringcomm import links_of, member_exposure_s
from hdp.plan.cost.topology import Topology, ring_shape
from hdp.plan.estimate import area_floor
from hdp.plan.floor import _gemm_groups, _range_area, _Sequence, _sweep, joint_floor, min_exposure_s
from hdp.plan.schedule.sharding import place

from .conftest import COST, COST_7B, batches

MOE = build_cost_model("tiny-moe")
RECOMPUTE = build_cost_model("llama-7b", recompute="full")
TOPOLOGIES = st.sampled_from([None, Topology(2, "two-level"), Topology(4, "two-level"), Topology(4, "flat"),
                              Topology(2, "bidirectional")])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), big=st.booleans(), topology=TOPOLOGIES)
def test_joint_floor_is_below_every_strategy_and_above_the_area_floor(batch, big, topology):
    lengths, ranks, capacity = batch
    cost = COST_7B if big else COST
    floor = joint_floor(lengths, ranks, capacity, cost, topology)
    assert floor >= area_floor(lengths, ranks, capacity, cost) * (1 - 1e-12)
    for name in STRATEGIES:
        try:
            plan = make_plan(lengths, ranks, capacity, cost, name, topology=topology)
        except PlanError:
            continue
        assert floor <= plan.predicted_step_time_s * (1 + 1e-12), name
        # A known plan's time only prunes: the floor is the same.
        assert math.isclose(joint_floor(lengths, ranks, capacity, cost, topology, plan.predicted_step_time_s), floor,
                            rel_tol=1e-12)


def unpruned(lengths, ranks, capacity, cost, topology):
    """The relaxation of hdp/plan/floor.py with every size of every long sequence evaluated exactly."""
    groups = _gemm_groups(cost)
    seqs = [_Sequence(cost, topology, n, place(n, capacity, cost, offload=True).ranks, ranks, groups) for n in lengths]
    least = [s.least_area() for s in seqs]
    start = math.fsum(least) / ranks
    long = [i for i, s in enumerate(seqs) if s.exact(s.fewest)[0] > start]
    rest = math.fsum(least) - math.fsum(least[i] for i in long)
    if not long:
        return start
    return _sweep([[seqs[i].exact(k) for k in range(seqs[i].fewest, ranks + 1)] for i in long], rest, ranks)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), ranks=st.sampled_from([16, 48, 96]), topology=TOPOLOGIES)
def test_pruning_keeps_the_floor_exact(seed, ranks, topology):
    import random

    rng = random.Random(seed)
    capacity = 4096
    lengths = [rng.choice([rng.randint(1, 4096), rng.randint(4096, 40 * 4096)]) for _ in range(rng.randint(1, 30))]
    lengths = [n for n in lengths if place(n, capacity, COST_7B, offload=True).ranks <= ranks] or [1]
    want = unpruned(lengths, ranks, capacity, COST_7B, topology)
    assert math.isclose(joint_floor(lengths, ranks, capacity, COST_7B, topology), want, rel_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(length=st.integers(2, 2**21), a=st.integers(2, 4096), width=st.integers(0, 300),
       cost=st.sampled_from([COST_7B, COST, MOE, RECOMPUTE]))
def test_range_area_is_below_every_size_in_the_range(length, a, width, cost):
    b = a + width
    bound = _range_area(cost, _gemm_groups(cost), length, a, b)
    for k in {a, b, (a + b) // 2, a + width // 3}:
        assert bound <= k * cost.seq_time(length, k) * (1 + 1e-12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), topology=TOPOLOGIES.filter(lambda t: t is not None))
def test_every_ring_exposes_at_least_the_least_exposure(batch, topology):
    lengths, ranks, capacity = batch
    for name in ("hdp-wide", "pow2", "static"):
        try:
            plan = make_plan(lengths, ranks, capacity, COST_7B, name, topology=topology)
        except PlanError:
            continue
        for ring in plan.rings:
            length = plan.sequences[ring.seq].length
            got = member_exposure_s(COST_7B, length, ring.size, ring.algo, *ring_shape(ring.ranks, topology.ranks_per_node),
                                    links_of(topology))
            assert min_exposure_s(COST_7B, topology, length, ring.size) <= got * (1 + 1e-12) + 1e-300


def test_joint_floor_sees_what_the_area_floor_misses():
    """One sequence that needs many ranks and many short ones: the area floor spreads the long
    one's work over every rank; the joint floor knows it cannot finish before its ring does."""
    cost, capacity = COST_7B, 4096
    lengths = [64 * 4096] + [4096] * 8
    floor = joint_floor(lengths, 72, capacity, cost)
    assert floor > 1.4 * area_floor(lengths, 72, capacity, cost)
    best = min(cost.seq_time(lengths[0], k) + cost.micro_batch_overhead(k) for k in range(64, 73))
    assert floor >= best
    assert floor <= make_plan(lengths, 72, capacity, cost, "auto").predicted_step_time_s


def test_a_sequence_no_plan_can_place_has_no_floor():
    assert joint_floor([10**6], 2, 4096, COST_7B) == math.inf


def test_tiny_moe_and_recompute_floors_bound_their_plans():
    for cost in (MOE, RECOMPUTE, COST):
        lengths, ranks, capacity = [9000, 300, 5000, 70000, 12], 24, 4096
        floor = joint_floor(lengths, ranks, capacity, cost, Topology(4, "two-level"))
        plan = make_plan(lengths, ranks, capacity, cost, "auto", topology=Topology(4, "two-level"))
        assert area_floor(lengths, ranks, capacity, cost) <= floor <= plan.predicted_step_time_s
