"""Planner variants that lost, kept for the benchmarks that show why (not in the strategy table).

* ``HDP_UNCAPPED``: ``hdp`` with the paper's literal offload rule, fewest ranks whatever the time:
  a 2M sequence shrinks to ~14 ranks and its ring sets the step.
* ``plan_wide``: ``hdp`` where a sequence whose per-rank time would exceed the batch's mean gets
  more ranks than the fewest (at most twice); the plan is named ``hdp-wide`` and does not claim
  ``fewest_ranks``. Slower than ``hdp`` in every configuration simulated so far.
"""

from __future__ import annotations

from hdp.plan.cost import CostModel
from hdp.plan.planner import check_lengths, place_all, plan_placed
from hdp.plan.sharding import Placement
from hdp.plan.strategies import HDP, HDP_BALANCE
from hdp.plan.types import Plan

HDP_UNCAPPED = HDP.replace(name="hdp-uncapped", offload_cap=False, about="hdp with the paper's literal offload rule")


def plan_wide(lengths: list[int], num_ranks: int, capacity: int, cost: CostModel, seed: int = 0) -> Plan:
    lengths = check_lengths(lengths)
    wide = HDP_BALANCE.replace(name="hdp-wide")
    placements = widen_rings(lengths, place_all(lengths, num_ranks, capacity, cost, wide), num_ranks, cost)
    return plan_placed(lengths, placements, num_ranks, capacity, cost, wide, seed=seed)


def widen_rings(lengths: list[int], placements: list[Placement], num_ranks: int, cost: CostModel) -> list[Placement]:
    """More ranks (no offloading) for sequences whose per-rank time exceeds the mean per-rank time."""
    target = sum(p.ranks * cost.seq_time(n, p.ranks) for n, p in zip(lengths, placements)) / num_ranks
    out = []
    for n, p in zip(lengths, placements):
        if p.ranks < 2 or cost.seq_time(n, p.ranks) <= target or p.ranks >= num_ranks:
            out.append(p)
            continue
        # seq_time falls with more ranks: the smallest k within the target, at most twice the fewest
        # (as many as power-of-two groups would give at worst) so that wide rings still pack side by side.
        lo, hi = p.ranks, min(num_ranks, 2 * p.ranks)
        while lo < hi:
            mid = (lo + hi) // 2
            if cost.seq_time(n, mid) <= target:
                hi = mid
            else:
                lo = mid + 1
        out.append(p if lo == p.ranks else Placement(lo, max(p.token_limit, 1)))
    return out
