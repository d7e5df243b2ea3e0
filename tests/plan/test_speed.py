"""The planner's speed-ups compute the same numbers as the plain definitions they replace.

* ``Draft.estimate`` (timing a plan before its segments exist) equals ``estimate`` of the finished plan;
* ``replay`` (identical ranks replayed once per class) equals the rank-by-rank replay of
  docs/plan-format.md, written out here as it was before;
* the memo of ``CostModel.seq_time`` returns what the formula gives.
"""

from __future__ import annotations

from collections import deque

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdp.plan import PlanError, build_cost_model, make_plan
from hdp.plan.cost.topology import Topology
from hdp.plan.estimate import estimate, micro_batch_times
from hdp.plan.replay import replay

from .conftest import COST, COST_7B, batches


def reference_replay(plan, durations):
    """Rank by rank, every arrival recorded (the replay before classes)."""
    n = plan.num_ranks
    mbs = [rp.micro_batches for rp in plan.ranks]
    arrivals = [[] for _ in plan.rings]
    ring_start = [0.0] * len(plan.rings)
    ptr, clock, wait, registered = [0] * n, [0.0] * n, [0.0] * n, [False] * n
    starts = [[] for _ in range(n)]
    queue = deque(range(n))
    while queue:
        r = queue.popleft()
        while ptr[r] < len(mbs[r]):
            mb = mbs[r][ptr[r]]
            start = clock[r]
            if mb.rings:
                if not registered[r]:
                    registered[r] = True
                    for g in mb.rings:
                        arrivals[g].append(clock[r])
                        if len(arrivals[g]) == plan.rings[g].size:
                            ring_start[g] = max(arrivals[g])
                            queue.extend(plan.rings[g].ranks)
                if any(len(arrivals[g]) < plan.rings[g].size for g in mb.rings):
                    break
                registered[r] = False
                start = max(ring_start[g] for g in mb.rings)
                wait[r] += start - clock[r]
            starts[r].append(start)
            clock[r] = start + durations[r][ptr[r]]
            ptr[r] += 1
    return tuple(clock), tuple(tuple(s) for s in starts), tuple(wait)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), big=st.booleans(), node=st.sampled_from([0, 2, 4]),
       strategy=st.sampled_from(["hdp", "hdp-wide", "static", "pow2", "hdp-naive", "auto"]))
def test_fast_estimate_and_replay_equal_the_definitions(batch, big, node, strategy):
    lengths, ranks, capacity = batch
    cost = COST_7B if big else COST
    topology = Topology(node, "two-level", kv_heads=cost.model.num_kv_heads) if node else None
    try:
        plan = make_plan(lengths, ranks, capacity, cost, strategy, topology=topology)
    except PlanError:
        return
    assert estimate(plan, cost, topology) == (plan.predicted_step_time_s, plan.lower_bound_s)
    times = micro_batch_times(plan, cost)
    rep = replay(plan, times)
    assert (rep.finish, rep.starts, rep.wait) == reference_replay(plan, times)


def test_a_static_mesh_replays_as_one_class_per_group_with_the_same_times():
    lengths = [3000] * 40 + [50_000] * 3
    plan = make_plan(lengths, 64, 8192, COST_7B, "static")
    times = micro_batch_times(plan, COST_7B)
    rep = replay(plan, times)
    assert (rep.finish, rep.starts, rep.wait) == reference_replay(plan, times)


def test_seq_time_memo_returns_the_formula():
    cost = build_cost_model("llama-7b")
    for n, k in [(1, 1), (4096, 1), (100_000, 7), (2_000_000, 256)]:
        attn = cost.attn_layer_time(n, doc_len=n / (2 * k) if k > 1 else n) / k
        formula = cost.layers * cost._recomputed(attn, cost.linear_layer_time(n / k))
        assert cost.seq_time(n, k) == formula  # computed
        assert cost.seq_time(n, k) == formula  # remembered
