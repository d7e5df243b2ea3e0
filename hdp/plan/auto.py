"""Strategy ``auto``: of the strategies that can plan a batch, the one the planner's estimate says is fastest.

No strategy wins every batch: offloading fewer ranks only pays where it shortens the step
(``hdp`` vs ``hdp-balance``), wider rings only where the critical sequences set the step
(``hdp-wide``), and with good rings ``pow2``'s aligned groups sometimes schedule better. ``auto``
plans every candidate of ``CANDIDATES`` and keeps the one with the smallest predicted step time
(ring transfers included when a topology is known), the first in ``CANDIDATES`` on a tie. So an
``auto`` plan is never predicted slower than any named strategy on the same batch.

Planning every candidate costs time, so candidates whose plans are expensive and rarely win
(``static`` builds a ring of the whole CP group for every sequence) are first bounded: a plan's
predicted time is at least its rank-seconds over the ranks and at least its longest micro-batch
(``layout_bound``), and a candidate whose bound already exceeds the best plan found is not planned.
The plan records ``chosen``, ``candidates`` (name -> predicted seconds of every candidate
planned), ``candidate_bounds`` (name -> the bound of every candidate left out by it) and
``candidates_skipped`` (name -> why a candidate cannot plan this batch); its rules are those of
the chosen candidate (docs/plan-format.md rule 4).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, Sequence

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.types import Plan

CANDIDATES = ("hdp", "hdp-wide", "hdp-balance", "pow2", "static", "hdp-offload", "hdp-naive")
"""Tried in this order; the first of equally fast plans wins. ``hdp-wide`` only with a topology
(without one it is ``hdp``); it comes early so that its plan, often the fastest, bounds the rest."""
BOUNDED = frozenset({"hdp-balance", "pow2", "static", "hdp-offload", "hdp-naive"})
"""Candidates whose ring sizes are known before planning, so ``layout_bound`` applies."""
SLACK = 1e-9
"""A bound must beat the best plan by more than float rounding to leave a candidate out."""

class Candidate(Protocol):
    """A candidate's plan, timed; ``build`` makes the plan (only the winner's is built)."""

    @property
    def predicted_step_time_s(self) -> float: ...

    def build(self) -> Plan: ...


PlanFn = Callable[[str], Candidate]
SizesFn = Callable[[str], Sequence[int]]


def layout_bound(lengths: Sequence[int], sizes: Sequence[int], num_ranks: int, cost: CostModel) -> float:
    """A lower bound on the predicted step time of any plan that puts sequence i on ``sizes[i]`` ranks.

    Every member of a ring of k ranks spends ``seq_time(L, k)`` on it and every micro-batch adds its
    overhead (``hdp.plan.estimate.micro_batch_time``); transfers and pipeline bubbles only add. So
    the step is at least the rank-seconds spread over all ranks, and at least the longest single
    sequence's micro-batch."""
    area = longest = 0.0
    for n, k in zip(lengths, sizes, strict=True):
        t = cost.seq_time(n, k)
        area += k * t
        longest = max(longest, t + cost.micro_batch_overhead(k))
    return max(area / num_ranks, longest)


def choose(lengths: Sequence[int], num_ranks: int, cost: CostModel, plan_one: PlanFn, sizes_of: SizesFn,
           widen: bool, errors: tuple[type[Exception], ...]) -> Plan:
    """The fastest candidate's plan, renamed ``auto`` and saying why (module docstring).

    ``plan_one(name)`` plans the batch with a named strategy (timed, not yet built), ``sizes_of(name)`` gives a bounded
    candidate's ring size per sequence; either raises one of ``errors`` when the candidate cannot
    plan the batch. ``widen``: a topology is known, so ``hdp-wide`` is a candidate."""
    best: Candidate | None = None
    best_name = ""
    times: dict[str, float] = {}
    bounds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    first_error: Exception | None = None
    for name in CANDIDATES:
        if name == "hdp-wide" and not widen:
            continue
        try:
            if best is not None and name in BOUNDED:
                bound = layout_bound(lengths, sizes_of(name), num_ranks, cost)
                if bound > best.predicted_step_time_s * (1 + SLACK):
                    bounds[name] = bound
                    continue
            plan = plan_one(name)
        except errors as e:
            skipped[name] = str(e)
            first_error = first_error or e
            continue
        times[name] = plan.predicted_step_time_s
        if best is None or plan.predicted_step_time_s < best.predicted_step_time_s:
            best, best_name = plan, name
    if best is None:
        assert first_error is not None
        raise first_error
    plan = best.build()
    extra = dict(plan.extra, chosen=best_name, candidates=times)
    if bounds:
        extra["candidate_bounds"] = bounds
    if skipped:
        extra["candidates_skipped"] = skipped
    return dataclasses.replace(plan, strategy="auto", extra=extra)
