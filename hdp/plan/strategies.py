"""The strategy table: every named planner configuration, one meaning in every command.

``hdp plan --strategy``, ``hdp simulate --strategies`` and ``hdp train --strategy`` all look names
up here, and ``make_plan`` takes a ``Strategy``. The order is the paper's ablation order: each HDP
row adds one idea to the one above it (``hdp-balance`` is the scheduler without offloading);
``auto`` (the default) plans with each of them and keeps the fastest by the estimate (``hdp.plan.auto``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from hdp.plan.schedule.balance_measure import BalanceBy

Layout = Literal["fewest", "static", "pow2", "auto"]


@dataclass(frozen=True, slots=True)
class Strategy:
    """A frozen set of planner options."""

    name: str
    """What plans record as ``strategy``."""
    layout: Layout
    """How ranks are chosen: the fewest per sequence (HDP), a fixed DP x CP mesh, or aligned
    power-of-two groups; ``auto``: whichever named strategy's plan is predicted fastest."""
    schedule: bool = False
    """HDP layouts only: the balance scheduler (else data-loader order, dealt round-robin)."""
    offload: bool = False
    """HDP layouts only: offload activations so that long sequences take fewer ranks."""
    offload_cap: bool = True
    """With ``offload``: take fewer ranks only while a sequence's per-rank time stays within the
    batch's no-offload bound (False: the paper's literal rule; benchmarks only)."""
    widen: bool = False
    """HDP layouts with a topology only: more ranks than the fewest where the planner's estimate
    (ring transfers included) says the step gets shorter: whole nodes for two-level rings, wider
    rings for the sequences that alone would set the step (``hdp.plan.schedule.critical``). Such plans do
    not keep rule 4, so ``hdp`` itself never widens."""
    balance_by: BalanceBy = "work"
    """What the scheduler equalises: docs/plan-format.md's work measure, or cost-model time."""
    about: str = ""

    def __post_init__(self) -> None:
        if self.layout not in ("fewest", "static", "pow2", "auto"):
            raise ValueError(f"strategy {self.name!r}: unknown layout {self.layout!r}")
        if self.layout != "fewest" and (self.schedule or self.offload or self.widen):
            raise ValueError(f"strategy {self.name!r}: only the fewest-ranks layout schedules, offloads or widens")
        if self.balance_by not in ("work", "time"):
            raise ValueError(f"strategy {self.name!r}: balance_by must be work or time, got {self.balance_by!r}")

    def replace(self, **changes: object) -> "Strategy":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


STATIC = Strategy("static", "static", about="fixed DP x CP mesh sized for the context length (Megatron-LM, MegaScale)")
POW2 = Strategy("pow2", "pow2", about="dynamic CP on aligned power-of-two groups (Megatron-LM dynamic CP)")
HDP_NAIVE = Strategy("hdp-naive", "fewest", about="fewest ranks per sequence, data-loader order, round-robin")
HDP_OFFLOAD = Strategy("hdp-offload", "fewest", offload=True, about="hdp-naive + selective activation offloading")
HDP = Strategy("hdp", "fewest", schedule=True, offload=True, about="hdp-offload + the balance scheduler (the method)")
HDP_BALANCE = Strategy("hdp-balance", "fewest", schedule=True, about="the balance scheduler without offloading")
AUTO = Strategy("auto", "auto", about="the fastest of the strategies above by the planner's estimate, per batch (default)")
HDP_WIDE = Strategy("hdp-wide", "fewest", schedule=True, offload=True, widen=True,
                    about="hdp + more ranks than the fewest where it shortens the step (whole nodes, critical rings)")

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (STATIC, POW2, HDP_NAIVE, HDP_OFFLOAD, HDP, HDP_BALANCE, HDP_WIDE, AUTO)}
DEFAULT_STRATEGY = "auto"
_WITH_OFFLOAD = {"hdp-naive": "hdp-offload", "hdp-balance": "hdp"}


def get_strategy(name: str | Strategy, offload: bool = False) -> Strategy:
    """The preset ``name``; ``offload`` (the old ``--offload`` flag) picks its offloading sibling."""
    if isinstance(name, Strategy):
        s = name
    else:
        try:
            s = STRATEGIES[name]
        except KeyError:
            raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None
    if offload and not s.offload and s.layout != "auto":  # auto already weighs offloading
        if s.name not in _WITH_OFFLOAD:
            raise ValueError(f"strategy {s.name} does not offload; offloading strategies: "
                             f"{', '.join(n for n, t in STRATEGIES.items() if t.offload)}")
        sibling = STRATEGIES[_WITH_OFFLOAD[s.name]]
        s = sibling if sibling.balance_by == s.balance_by else sibling.replace(balance_by=s.balance_by)
    return s


def strategy_table() -> str:
    """The table for ``--help`` (argparse epilogs keep these lines as they are)."""
    width = max(map(len, STRATEGIES))
    return "strategies:\n" + "\n".join(f"  {n:<{width}}  {s.about}" for n, s in STRATEGIES.items())
