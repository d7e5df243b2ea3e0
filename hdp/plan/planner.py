"""``make_plan``: lengths -> Plan, for every strategy. Pure function; no torch, no environment."""

from __future__ import annotations

from typing import Literal, Sequence

from hdp.plan.balance import Balance, plan_balanced, plan_naive
from hdp.plan.baselines import plan_pow2, plan_static
from hdp.plan.cost import CostModel
from hdp.plan.draft import Draft
from hdp.plan.sharding import PlanError, place
from hdp.plan.types import Plan
from hdp.plan.weights import BalanceBy, weights_for

Strategy = Literal["hdp", "hdp-naive", "static", "pow2"]
STRATEGIES: tuple[str, ...] = ("hdp", "hdp-naive", "static", "pow2")


def check_lengths(lengths: Sequence[object]) -> list[int]:
    if len(lengths) == 0:
        raise PlanError("the batch is empty: give at least one sequence length")
    out = []
    for i, n in enumerate(lengths):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PlanError(f"sequence {i} has length {n!r}; lengths must be positive integers")
        out.append(n)
    return out


def make_plan(
    lengths: Sequence[int],
    num_ranks: int,
    capacity: int,
    cost: CostModel,
    strategy: Strategy = "hdp",
    balance: Balance = "dp",
    offload: bool = False,
    max_len: int | None = None,
    seed: int = 0,
    balance_by: BalanceBy = "work",
) -> Plan:
    """Plan one global batch.

    ``max_len`` is the context length a static mesh is sized for (default: the batch's longest).
    ``balance="pp"`` treats every HDP rank as a pipeline of ``cost.pp`` stages. ``balance_by`` is what
    the scheduler equalises: ``work`` (PLAN_FORMAT's FLOP-proportional measure; the default, since
    rings synchronise ranks and a schedule balanced on it stays balanced when real times deviate
    from the calibration) or ``time`` (the calibrated cost model). Placement, offload ratios and the
    predicted step time always use the cost model. ``seed`` is recorded; planning is deterministic
    and breaks every tie by index.
    """
    lengths = check_lengths(lengths)
    if num_ranks < 1:
        raise PlanError(f"--ranks must be >= 1, got {num_ranks}")
    if capacity < 1:
        raise PlanError(f"--capacity must be >= 1 token, got {capacity}")
    if strategy not in STRATEGIES:
        raise PlanError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if balance not in ("dp", "pp"):
        raise PlanError(f"unknown balance mode {balance!r}; choose dp or pp")
    longest = max(lengths)
    if max_len is not None and longest > max_len:
        i = lengths.index(longest)
        raise PlanError(f"sequence {i} has {longest:,} tokens, more than --max-len {max_len:,}: raise --max-len")
    use_offload = offload and strategy in ("hdp", "hdp-naive")
    placements = [place(n, capacity, cost, use_offload) for n in lengths]
    for i, p in enumerate(placements):
        if p.ranks > num_ranks:
            hint = "" if use_offload else ", or enable offloading (--offload)"
            raise PlanError(
                f"sequence {i} has {lengths[i]:,} tokens; at capacity {capacity:,} it needs {p.ranks:,} "
                f"ranks but only {num_ranks:,} exist: raise --ranks or --capacity{hint}"
            )
    draft = Draft(lengths, num_ranks, capacity)
    extra: dict[str, object] = {"seed": seed, "balance": balance, "balance_by": balance_by, "offload": use_offload}
    if strategy == "hdp":
        plan_balanced(draft, placements, weights_for(cost, balance_by), balance, stages=cost.pp)
    elif strategy == "hdp-naive":
        plan_naive(draft, placements)
    elif strategy == "static":
        extra["cp_size"] = plan_static(draft, max_len or longest)
    else:
        plan_pow2(draft, cost)
    if use_offload:
        base = sum(place(n, capacity).ranks for n in lengths if n > capacity)
        extra["offload_ranks_saved"] = base - sum(p.ranks for n, p in zip(lengths, placements) if n > capacity)
    stages = cost.pp if balance == "pp" else 1
    return draft.finish(strategy, cost, stages=stages, extra=extra)
