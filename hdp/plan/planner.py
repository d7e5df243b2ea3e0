"""``make_plan``: lengths -> Plan, for every strategy. Pure function; no torch, no environment."""

from __future__ import annotations

from typing import Literal, Sequence

from hdp.plan.balance import Balance, plan_balanced, plan_naive
from hdp.plan.baselines import plan_pow2, plan_static
from hdp.plan.cost import CostModel
from hdp.plan.draft import Draft, time_bound
from hdp.plan.sharding import Placement, PlanError, place
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
    offload_cap: bool = True,
    widen: bool = False,
) -> Plan:
    """Plan one global batch.

    ``max_len`` is the context length a static mesh is sized for (default: the batch's longest).
    ``balance="pp"`` treats every HDP rank as a pipeline of ``cost.pp`` stages. ``balance_by`` is what
    the scheduler equalises: ``work`` (PLAN_FORMAT's FLOP-proportional measure; the default, since
    rings synchronise ranks and a schedule balanced on it stays balanced when real times deviate
    from the calibration) or ``time`` (the calibrated cost model). Placement, offload ratios and the
    predicted step time always use the cost model. ``seed`` is recorded; planning is deterministic
    and breaks every tie by index.
    ``offload_cap`` (with ``offload``; on by default) keeps a sequence on more ranks than offloading allows when
    the fewest would make its per-rank time exceed the no-offload lower bound of the batch: fewer
    ranks then lengthen the step instead of freeing ranks (the simulator shows this at 2M tokens).
    ``widen`` (strategy ``hdp`` only; DESIGN.md "beyond the paper") gives a sequence more ranks than
    the fewest when its per-rank time would exceed the batch's mean per-rank time; the plan is then
    named ``hdp-wide`` (PLAN_FORMAT rule 4 does not hold for it).
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
    # Offloading that pushes a sequence's per-rank time past the batch's bound lengthens the step.
    cap = time_bound(lengths, num_ranks, capacity, cost) if use_offload and offload_cap else None
    placements = [place(n, capacity, cost, use_offload, time_cap=cap) for n in lengths]
    for i, p in enumerate(placements):
        if p.ranks > num_ranks:
            hint = "" if use_offload else ", or enable offloading (--offload)"
            raise PlanError(
                f"sequence {i} has {lengths[i]:,} tokens; at capacity {capacity:,} it needs {p.ranks:,} "
                f"ranks but only {num_ranks:,} exist: raise --ranks or --capacity{hint}"
            )
    if widen and strategy == "hdp":
        placements = widen_rings(lengths, placements, num_ranks, cost)
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
    name = "hdp-wide" if widen and strategy == "hdp" else strategy
    return draft.finish(name, cost, stages=stages, extra=extra)


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
        out.append(p if lo == p.ranks else Placement(lo, 0.0, max(p.token_limit, 1)))
    return out
