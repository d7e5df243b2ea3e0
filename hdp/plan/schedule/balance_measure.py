"""What the balance scheduler balances: a per-rank weight for a whole sequence or a ring share.

``TimeWeights`` is the cost model (seconds on the device, with its short-sequence attention penalty
and per-micro-batch overheads). ``WorkWeights`` is docs/plan-format.md's work measure (a token at position p
costs 1 + a*(p+1)), which outside tools use to compare plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.work import sequence_work

BalanceBy = Literal["time", "work"]


class Weights(Protocol):
    def whole(self, length: int) -> float: ...
    def ring(self, length: int, ring_size: int) -> float: ...
    def overhead(self, ring_size: int = 1) -> float: ...


@dataclass(frozen=True, slots=True)
class TimeWeights:
    cost: CostModel

    def whole(self, length: int) -> float:
        return self.cost.seq_time(length)

    def ring(self, length: int, ring_size: int) -> float:
        return self.cost.seq_time(length, ring_size) + self.cost.micro_batch_overhead(ring_size)

    def overhead(self, ring_size: int = 1) -> float:
        return self.cost.micro_batch_overhead(ring_size)


@dataclass(frozen=True, slots=True)
class WorkWeights:
    a: float

    def whole(self, length: int) -> float:
        return sequence_work(length, self.a)

    def ring(self, length: int, ring_size: int) -> float:
        return sequence_work(length, self.a) / ring_size  # zig-zag: equal shares

    def overhead(self, ring_size: int = 1) -> float:
        return 0.0


def weights_for(cost: CostModel, by: BalanceBy) -> Weights:
    if by == "time":
        return TimeWeights(cost)
    if by == "work":
        return WorkWeights(cost.work_coefficient)
    raise ValueError(f"unknown balance measure {by!r}; choose time or work")
