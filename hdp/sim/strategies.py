"""Simulator strategy names -> planner calls (``hdp.plan.make_plan``).

* ``static``: a fixed DP x CP mesh sized for the context length (max_len).
* ``pow2``: dynamic CP on aligned power-of-two groups (Megatron-LM's dynamic CP).
* ``hdp-naive``: HDP rings on the fewest ranks, no offloading, no balance scheduler.
* ``hdp-offload``: hdp-naive plus selective activation offloading, as far as a sequence's per-rank
  time stays within the batch's no-offload lower bound (the planner's default offload cap).
* ``hdp``: offloading and the balance scheduler (pipeline-aware when pp > 1).
* ``hdp-uncapped``: ``hdp`` with the paper's literal rule, fewest ranks whatever the time
  (``make_plan(offload_cap=False)``): a 2M sequence shrinks to ~14 ranks and sets the step.
* ``hdp-wide``: ``hdp`` plus ``make_plan(widen=True)`` (DESIGN.md "beyond the paper"): a
  sequence whose per-rank time would exceed the batch's mean gets more ranks than the fewest.
* ``hdp-balance``: the balance scheduler without offloading (not in the paper's ablation; shows
  what the scheduler alone gives when the planner's offloading rule lengthens the longest ring).

The order is the paper's ablation order: each adds one idea to the previous.
"""

from __future__ import annotations

from hdp.plan.cost import CostModel
from hdp.plan.planner import make_plan
from hdp.plan.sharding import PlanError
from hdp.plan.types import Plan

SIM_STRATEGIES: tuple[str, ...] = ("static", "pow2", "hdp-naive", "hdp-offload", "hdp", "hdp-uncapped", "hdp-wide", "hdp-balance")
ALL: tuple[str, ...] = tuple(s for s in SIM_STRATEGIES if s != "hdp-wide")
"""What ``--strategies all`` runs (hdp-wide is experimental and slower so far; ask for it by name)."""


def parse_strategies(text: str) -> list[str]:
    if text.strip() == "all":
        return list(ALL)
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError("--strategies is empty; give a comma-separated list or 'all'")
    for s in names:
        if s not in SIM_STRATEGIES:
            raise ValueError(f"--strategies: unknown strategy {s!r}; choose from {', '.join(SIM_STRATEGIES)} or 'all'")
    return list(dict.fromkeys(names))


def plan_strategy(strategy: str, lengths: list[int], num_ranks: int, capacity: int, cost: CostModel,
                  max_len: int | None, seed: int) -> Plan:
    kw: dict[str, object] = {}
    if strategy == "static":
        kw = {"strategy": "static", "max_len": max_len}
    elif strategy == "pow2":
        kw = {"strategy": "pow2"}
    elif strategy == "hdp-naive":
        kw = {"strategy": "hdp-naive"}
    elif strategy == "hdp-offload":
        kw = {"strategy": "hdp-naive", "offload": True}
    elif strategy == "hdp":
        kw = {"strategy": "hdp", "offload": True, "balance": "pp" if cost.pp > 1 else "dp"}
    elif strategy == "hdp-uncapped":
        kw = {"strategy": "hdp", "offload": True, "offload_cap": False, "balance": "pp" if cost.pp > 1 else "dp"}
    elif strategy == "hdp-wide":
        kw = {"strategy": "hdp", "offload": True, "offload_cap": True, "widen": True,
              "balance": "pp" if cost.pp > 1 else "dp"}
    elif strategy == "hdp-balance":
        kw = {"strategy": "hdp", "balance": "pp" if cost.pp > 1 else "dp"}
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    try:
        return make_plan(lengths, num_ranks, capacity, cost, seed=seed, **kw)  # type: ignore[arg-type]
    except PlanError as e:
        # The planner speaks of HDP ranks; the simulator's user sets GPUs (ranks = gpus / (tp*pp)).
        msg = str(e).replace("raise --ranks", "raise --gpus").replace(", or enable offloading (--offload)", "")
        raise PlanError(f"{strategy}: {msg}") from None
