"""``make_plan``: lengths -> Plan, for every strategy. Pure function; no torch, no environment.

Two steps: ``place_all`` decides how many ranks (and offloaded layers) each sequence takes, and
``plan_placed`` lays the placements out on ranks with the strategy's scheduler. Benchmarks that
try other placements call the two steps themselves.
"""

from __future__ import annotations

import dataclasses
import gc
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

from hdp.plan.schedule.balance import plan_balanced, plan_naive
from hdp.plan.schedule.balance_measure import weights_for
from hdp.plan.auto import SLACK, choose, layout_bound
from hdp.plan.schedule.baselines import plan_pow2, plan_static, pow2_sizes, static_cp_size
from hdp.plan.cost.cost_model import CostModel
from hdp.plan.schedule.critical import widened_candidates
from hdp.plan.schedule.draft import Draft
from hdp.plan.schedule.free_ranks import FreeRanks, memo_stretch
from hdp.plan.estimate import time_bound
from hdp.plan.schedule.sharding import Placement, PlanError, offload_token_limit, place
from hdp.plan.strategies import Strategy, get_strategy
from hdp.plan.cost.topology import Topology
from hdp.plan.schedule.whole_nodes import round_down, round_up
from hdp.plan.types import Plan
from hdp.plan.zigzag import ranks_needed


MAX_RANKS = 2**17
"""The most ranks the planner takes (131,072: above today's largest training jobs). Plans hold a list
per rank; far beyond this a plan takes minutes and gigabytes, so it is refused at once instead."""
MAX_SEQUENCES = 2**20
"""The most sequences in one global batch (1,048,576; a 512M-token batch of a long-tail corpus has ~45,000)."""
MAX_BATCH_TOKENS = 2**32
"""The most tokens of a synthetic batch (``hdp plan/simulate --tokens``): 8x the largest row the
planner is timed on (512M tokens on 16,384 ranks, benchmarks/plan_speed.py)."""
MAX_LENGTH = 2**53
"""The longest sequence: the cost model computes in floats, exact for integers up to 2**53."""


def check_lengths(lengths: Sequence[object]) -> list[int]:
    if len(lengths) == 0:
        raise PlanError("the batch is empty: give at least one sequence length")
    if len(lengths) > MAX_SEQUENCES:
        raise PlanError(f"the batch has {len(lengths):,} sequences, more than the planner takes "
                        f"({MAX_SEQUENCES:,}): split it into several global batches")
    out = []
    for i, n in enumerate(lengths):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PlanError(f"sequence {i} has length {n!r}; lengths must be positive integers")
        if n > MAX_LENGTH:
            raise PlanError(f"sequence {i} has {n:,} tokens, more than the planner takes ({MAX_LENGTH:,}): "
                            "cut it into documents the cluster can hold")
        out.append(n)
    return out


def check_batch_tokens(tokens: int) -> None:
    """A synthetic batch's size, before it is drawn (drawing 1e11 tokens alone takes minutes)."""
    if not 1 <= tokens <= MAX_BATCH_TOKENS:
        raise PlanError(f"a synthetic batch of {tokens:,} tokens: give between 1 and {MAX_BATCH_TOKENS:,} tokens")


def _check_fits_at_all(lengths: list[int], num_ranks: int, capacity: int, cost: CostModel) -> None:
    """Refuse at once a sequence that no strategy can hold and whose fewest ranks take long to count.

    Counting a sequence's fewest ranks exactly walks about L / limit**2 steps (``ranks_needed``):
    minutes for a 16-digit length. Even offloading every middle layer a rank holds at most
    ``capacity * l / 2`` tokens (``offload_token_limit``), so a sequence longer than ``num_ranks``
    times that fits nowhere. Where the exact count is quick the planner counts and says how many
    ranks it needs."""
    limit = max(capacity, offload_token_limit(capacity, cost.layers, 1.0))
    longest = max(lengths)
    if longest > num_ranks * limit and longest // capacity**2 > 10**6:
        i = lengths.index(longest)
        raise PlanError(f"sequence {i} has {longest:,} tokens; at capacity {capacity:,} it needs more than "
                        f"{num_ranks:,} ranks even offloading every layer it may: raise {{num_ranks}} or {{capacity}}")


def make_plan(lengths: Sequence[int], num_ranks: int, capacity: int, cost: CostModel,
              strategy: str | Strategy = "hdp", *, max_len: int | None = None, seed: int = 0,
              topology: Topology | None = None) -> Plan:
    """Plan one global batch with a strategy of ``hdp.plan.strategies`` (a name or a ``Strategy``).

    ``max_len`` is the context length a static mesh is sized for (default: the batch's longest).
    With ``cost.pp > 1`` every HDP rank is a 1F1B pipeline of ``cost.pp`` stages and the scheduler
    balances pipelines. ``seed`` is recorded; planning is deterministic and breaks every tie by index.
    ``topology`` (ranks per node, ring algorithm, links; ``hdp.plan.cost.topology``) makes the scheduler
    place rings by node and see their transfers, and records ``algo`` per ring and
    ``gpus_per_node``; without it plans are as before (flat rings, no topology). With a topology,
    a strategy that widens (``hdp-wide``) keeps the fastest by the estimate of its fewest-ranks
    plan and its widened ones (whole nodes, ``hdp.plan.schedule.critical``), so it is never predicted slower.
    ``auto`` plans with every candidate strategy and keeps the fastest (``hdp.plan.auto``).
    """
    s = get_strategy(strategy)
    lengths = check_lengths(lengths)
    if not 1 <= num_ranks <= MAX_RANKS:
        raise PlanError(f"{{num_ranks}} must be between 1 and {MAX_RANKS:,}, got {num_ranks:,}")
    if capacity < 1:
        raise PlanError(f"{{capacity}} must be >= 1 token, got {capacity}")
    _check_fits_at_all(lengths, num_ranks, capacity, cost)
    longest = max(lengths)
    if max_len is not None and longest > max_len:
        i = lengths.index(longest)
        raise PlanError(f"sequence {i} has {longest:,} tokens, more than {{max_len}} {max_len:,}: raise {{max_len}}")
    with _no_cycle_collection():
        if s.layout == "auto":
            return _plan_auto(lengths, num_ranks, capacity, cost, s, max_len=max_len, seed=seed, topology=topology)
        return _pending(lengths, num_ranks, capacity, cost, s, max_len, seed, topology).build()


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The cycle collector paused while a plan is built: a plan at 16,384 ranks is millions of
    small objects made at once, and each collection walked all of them (a third of static's and
    auto's time). ``freeze`` + ``unfreeze`` then moves them to the oldest generation without a pass
    (nothing stays frozen; skipped if the caller froze objects): collected at its next full pass."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class Pending:
    """A plan scheduled and timed (``Draft.estimate``) but not yet built: a planner comparing
    candidates builds the segments of the one it keeps only."""

    draft: Draft
    strategy: Strategy
    cost: CostModel
    extra: dict
    topology: Topology | None
    timed: tuple[float, float]

    @property
    def predicted_step_time_s(self) -> float:
        return self.timed[0]

    def build(self) -> Plan:
        stages = self.cost.pp if self.cost.pp > 1 else 1
        return self.draft.finish(self.strategy.name, self.cost, stages=stages, extra=self.extra,
                                 topology=self.topology, timed=self.timed)


def _same_schedule(a: Strategy, b: Strategy) -> bool:
    """Whether two strategies place and schedule a batch alike before any widening."""
    return all(getattr(a, f) == getattr(b, f) for f in ("layout", "schedule", "offload", "offload_cap", "balance_by"))


def _pending(lengths: list[int], num_ranks: int, capacity: int, cost: CostModel, s: Strategy,
             max_len: int | None, seed: int, topology: Topology | None, base: Pending | None = None,
             memo: dict | None = None) -> Pending:
    """A named strategy's plan, not yet built (``make_plan``). ``base``: the same strategy without
    widening, already planned (``auto`` has ``hdp``'s plan when it widens); ``memo``: placements and
    widened candidates (with bounds) by what they depend on, shared by ``auto``'s candidates."""
    memo = {} if memo is None else memo
    key = (s.layout, s.offload, s.offload_cap)
    if key not in memo:
        memo[key] = fewest_placements(lengths, num_ranks, capacity, cost, s, topology)
    placements = memo[key]
    if base is not None and _same_schedule(base.strategy, s):
        best = dataclasses.replace(base, strategy=s)
    else:
        best = draft_placed(lengths, placements, num_ranks, capacity, cost, s, max_len, seed, topology, memo)
    if topology is None or not s.widen:
        return best
    # Widening: the fastest by the estimate of the fewest-ranks plan, whole nodes, and wider
    # critical rings (hdp.plan.schedule.critical).
    if ("widened", key) not in memo:
        aligned = round_up(lengths, placements, num_ranks, topology)
        candidates = [] if aligned == placements else [aligned]
        candidates += widened_candidates(lengths, aligned, num_ranks, capacity, cost, topology)
        memo["widened", key] = [(w, layout_bound(lengths, [p.ranks for p in w], num_ranks, cost)) for w in candidates]
    # Lowest bound first, so a good plan early leaves more out: a candidate whose bound exceeds the
    # best cannot replace it and is not scheduled. Ties go to the earlier candidate (base first), so
    # the plan kept is the one the candidates' own order keeps.
    rank = -1
    for i, (wide, bound) in sorted(enumerate(memo["widened", key]), key=lambda c: c[1][1]):
        if bound > best.predicted_step_time_s * (1 + SLACK):
            continue
        other = draft_placed(lengths, wide, num_ranks, capacity, cost, s, max_len, seed, topology, memo)
        t, b = other.predicted_step_time_s, best.predicted_step_time_s
        if t < b or (t == b and i < rank):
            best, rank = other, i
    return best


def fewest_placements(lengths: list[int], num_ranks: int, capacity: int, cost: CostModel, s: Strategy,
                      topology: Topology | None) -> list[Placement]:
    """What a fewest-ranks strategy places before scheduling: ``place_all``, then whole nodes by
    offloading a layer more where rings are two-level (``round_down``; rule 4 holds)."""
    placements = place_all(lengths, num_ranks, capacity, cost, s)
    if topology is not None and s.offload:
        cap = time_bound(lengths, num_ranks, capacity, cost) if s.offload_cap else None
        placements = round_down(lengths, placements, capacity, cost, topology, cap)
    return placements


def _plan_auto(lengths: list[int], num_ranks: int, capacity: int, cost: CostModel, auto: Strategy, *,
               max_len: int | None, seed: int, topology: Topology | None) -> Plan:
    """``auto`` (``hdp.plan.auto``): every candidate with this batch, the fastest kept."""
    def named(name: str) -> Strategy:
        s = get_strategy(name)
        return s.replace(balance_by=auto.balance_by) if s.layout == "fewest" else s

    done: dict[str, Pending] = {}
    memo: dict = {}  # placements and widened candidates, shared by candidates that place alike

    def plan_one(name: str) -> Pending:
        base = done.get("hdp") if name == "hdp-wide" else None  # hdp-wide starts from hdp's plan
        done[name] = _pending(lengths, num_ranks, capacity, cost, named(name), max_len, seed, topology, base, memo)
        return done[name]

    def sizes_of(name: str) -> list[int]:
        if name == "static":
            cp = static_cp_size(num_ranks, capacity, max_len or max(lengths), sorted(set(lengths)))
            return [cp] * len(lengths)
        if name == "pow2":
            return pow2_sizes(lengths, capacity, num_ranks)
        s = named(name)
        if (key := (s.layout, s.offload, s.offload_cap)) not in memo:
            memo[key] = fewest_placements(lengths, num_ranks, capacity, cost, s, topology)
        return [p.ranks for p in memo[key]]

    return choose(lengths, num_ranks, cost, plan_one, sizes_of, widen=topology is not None, errors=(PlanError,))


def place_all(lengths: list[int], num_ranks: int, capacity: int, cost: CostModel, strategy: Strategy) -> list[Placement]:
    """The fewest ranks of every sequence (with the strategy's offloading); a sequence that needs
    more ranks than exist is an error."""
    # Offloading that pushes a sequence's per-rank time past the batch's bound lengthens the step.
    cap = time_bound(lengths, num_ranks, capacity, cost) if strategy.offload and strategy.offload_cap else None
    placements = [place(n, capacity, cost, strategy.offload, time_cap=cap) for n in lengths]
    for i, p in enumerate(placements):
        if p.ranks > num_ranks:
            _too_long(i, lengths[i], p.ranks, num_ranks, capacity, strategy)
    return placements


def _too_long(i: int, length: int, need: int, num_ranks: int, capacity: int, strategy: Strategy) -> None:
    hint = "" if strategy.offload or strategy.layout != "fewest" else ", or use a strategy that offloads"
    raise PlanError(f"sequence {i} has {length:,} tokens; at capacity {capacity:,} it needs {need:,} "
                    f"ranks but only {num_ranks:,} exist: raise {{num_ranks}} or {{capacity}}{hint}")


def plan_placed(lengths: list[int], placements: list[Placement], num_ranks: int, capacity: int, cost: CostModel,
                strategy: Strategy, max_len: int | None = None, seed: int = 0,
                topology: Topology | None = None) -> Plan:
    """Lay placed sequences out on ranks with the strategy's scheduler and finish the plan."""
    return draft_placed(lengths, placements, num_ranks, capacity, cost, strategy, max_len, seed, topology).build()


def draft_placed(lengths: list[int], placements: list[Placement], num_ranks: int, capacity: int, cost: CostModel,
                 strategy: Strategy, max_len: int | None = None, seed: int = 0,
                 topology: Topology | None = None, memo: dict | None = None) -> Pending:
    """``plan_placed``, timed but not built (``memo``: ring stretches shared by one batch's drafts).

    The plan says ``"fewest_ranks": true`` when every sequence is on its fewest ranks for its
    micro-batch's token limit (docs/plan-format.md rule 4), so the validator checks the rule."""
    pipelines = cost.pp > 1
    draft = Draft(lengths, num_ranks, capacity)
    extra: dict[str, object] = {"seed": seed, "balance": "pp" if pipelines else "dp",
                                "balance_by": strategy.balance_by, "offload": strategy.offload}
    if strategy.layout == "static":
        extra["cp_size"] = plan_static(draft, max_len or max(lengths))
    elif strategy.layout == "pow2":
        plan_pow2(draft, cost)
    elif strategy.schedule:
        free = stretch = None
        if topology is not None:
            free = FreeRanks(num_ranks, topology)  # rings placed by node (``pick_members``)
            stretch = memo_stretch(cost, topology, lengths, {} if memo is None else memo.setdefault("stretch", {}))
        plan_balanced(draft, placements, weights_for(cost, strategy.balance_by), "pp" if pipelines else "dp",
                      stages=cost.pp, free=free, stretch=stretch)
    else:
        plan_naive(draft, placements)
    if strategy.offload:
        base = sum(ranks_needed(n, capacity) for n in lengths if n > capacity)
        extra["offload_ranks_saved"] = base - sum(p.ranks for n, p in zip(lengths, placements) if n > capacity)
    if strategy.layout == "fewest" and all(p.ranks == ranks_needed(n, p.token_limit) for n, p in zip(lengths, placements)):
        extra["fewest_ranks"] = True
    return Pending(draft, strategy, cost, extra, topology, draft.estimate(cost, cost.pp if pipelines else 1, topology))
