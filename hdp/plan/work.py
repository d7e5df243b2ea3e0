"""The work measure of docs/plan-format.md ("Work, for comparing plans") and its lower bound.

A token at position p costs ``1 + a*(p+1)``. Outside tools judge plans by this measure, so the
benchmarks report makespan / lower bound with it, next to the planner's own cost model.
"""

from __future__ import annotations

import math
from typing import Iterable

from hdp.plan.replay import replay
from hdp.plan.types import MicroBatch, Plan


def segment_work(start: int, end: int, a: float) -> float:
    """Sum over p in [start, end) of 1 + a*(p+1)."""
    return (end - start) + a * ((end * (end + 1) - start * (start + 1)) / 2)


def sequence_work(length: int, a: float) -> float:
    return segment_work(0, length, a)


def micro_batch_work(mb: MicroBatch, a: float) -> float:
    return sum(segment_work(s.start, s.end, a) for s in mb.segments)


def makespan(plan: Plan, a: float) -> float:
    return replay(plan, [[micro_batch_work(mb, a) for mb in rp.micro_batches] for rp in plan.ranks]).makespan


def bound_from_items(items: Iterable[tuple[float, int]], num_ranks: int, stages: int = 1) -> float:
    """Lower bound from (per-rank work, ranks occupied) items: the docs/plan-format.md formula.

    max(total / N, max over thresholds w of ceil(S(w) / N) * w), S(w) = ranks of items >= w.
    With ``stages`` P > 1 every rank is a 1F1B pipeline and an item's work is its time on one
    stage: the micro-batch holding the heaviest item w passes forward through all P stages and
    backward through them again, so the step is at least P * w.
    """
    items = sorted(items, key=lambda x: -x[0])
    total = sum(w * k for w, k in items)
    best = total / num_ranks
    if stages > 1 and items:
        best = max(best, stages * items[0][0])
    occupied = 0
    for i, (w, k) in enumerate(items):
        occupied += k
        if i + 1 < len(items) and items[i + 1][0] == w:
            continue  # count every item of equal work before using the threshold
        best = max(best, math.ceil(occupied / num_ranks) * w)
    return best


def lower_bound(lengths: list[int], num_ranks: int, capacity: int, a: float) -> float:
    def per_rank(length: int) -> tuple[float, int]:
        k = math.ceil(length / capacity)
        return sequence_work(length, a) / k, k

    return bound_from_items((per_rank(n) for n in lengths), num_ranks)


def quality(plan: Plan, a: float) -> dict[str, float]:
    """Makespan, lower bound and their ratio by the work measure."""
    span = makespan(plan, a)
    bound = lower_bound([s.length for s in plan.sequences], plan.num_ranks, plan.capacity_tokens, a)
    return {"makespan": span, "lower_bound": bound, "ratio": span / bound if bound else 1.0}

