"""Data-aware sharding: how many ranks a sequence needs, and which tokens each ring member holds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.zigzag import max_member_tokens, ranks_needed


class PlanError(ValueError):
    """User input the planner cannot plan; the message says what to do.

    The text names ``make_plan``'s parameters in braces (``"raise {num_ranks} or {capacity}"``);
    ``message(names)`` spells them as a command's flags, so the library never speaks of flags
    and each command names its own (``hdp.commands.flags``)."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(self.message())

    def message(self, names: Mapping[str, str] | None = None) -> str:
        return self.text.format_map(_Names(names or {}))


class _Names(dict):
    """Parameter names a command does not map stay as they are."""

    def __missing__(self, key: str) -> str:
        return key


@dataclass(frozen=True, slots=True)
class Placement:
    """How one sequence is held: on ``ranks`` ranks, ``offload_layers`` of its ``offloadable``
    middle layers keeping their activations on the host."""

    ranks: int
    token_limit: int
    offload_layers: int = 0
    offloadable: int = 0
    """Layers that may be offloaded (l - 2): the denominator of the plan's ``offload_ratio``."""

    @property
    def offload_ratio(self) -> float:
        return self.offload_layers / self.offloadable if self.offload_layers else 0.0


def offload_token_limit(capacity: int, layers: int, ratio: float) -> int:
    """Tokens a rank holds when ``ratio`` of its l-2 middle layers keep activations on the host.

    Memory per rank: (2 + (1-r)(l-2)) * Act(s/D) <= l * Act(C)  (docs/design.md), so
    s/D <= C * l / (2 + (1-r)(l-2)).
    """
    if layers <= 2 or ratio <= 0:
        return capacity
    return int(capacity * layers / (2 + (1 - ratio) * (layers - 2)) + 1e-9)


def num_offload_layers(offload_ratio: float, num_layers: int) -> int:
    """Whole layers of a ratio r = j / (l - 2): round(r * (l - 2)) (for plans that carry only the ratio)."""
    return int(offload_ratio * max(num_layers - 2, 0) + 0.5)


def offload_ratio_of(num_offloaded: int, num_layers: int) -> float:
    """The plan's ``offload_ratio`` of j offloaded layers: j / (l - 2)."""
    return num_offloaded / (num_layers - 2) if num_offloaded else 0.0


def offloaded_layers(num_offloaded: int, num_layers: int) -> tuple[int, ...]:
    """Which layers keep their saved activations on the host, for the memory formula above.

    The first and last layers stay resident; the j offloaded middle layers are spread evenly,
    1 + floor(t * (l - 2) / j) for t < j, so each is followed by resident layers under whose
    forward its device->host copy hides (and under whose backward its prefetch hides).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    middle = max(num_layers - 2, 0)
    if not 0 <= num_offloaded <= middle:
        raise ValueError(f"offload_layers must be in [0, {middle}] for {num_layers} layers, got {num_offloaded}")
    return tuple(1 + (t * middle) // num_offloaded for t in range(num_offloaded))


def max_offload_layers(length: int, capacity: int, cost: CostModel) -> int:
    """The most middle layers a sequence may offload: the copies must hide under the forward compute
    (CostModel.max_offload_ratio) and the host of one device must hold the offloaded layers of the
    tokens one rank then takes (DeviceProfile.host_mem_gib)."""
    middle = cost.layers - 2
    if middle <= 0:
        return 0
    j_max = math.floor(cost.max_offload_ratio(length) * middle + 1e-9)
    host = cost.device.host_mem_gib * 2**30
    while j_max > 0 and j_max * cost.act_bytes(min(length, offload_token_limit(capacity, cost.layers, j_max / middle))) > host:
        j_max -= 1
    return j_max


def hold(length: int, k: int, capacity: int, cost: CostModel, max_layers: int) -> Placement | None:
    """The sequence on k ranks with the fewest offloaded layers (at most ``max_layers``) whose token
    limit holds its largest zig-zag member; None when none does (rule 3)."""
    need = max_member_tokens(length, k) if k > 1 else length
    if need <= capacity:
        return Placement(k, capacity)
    middle = cost.layers - 2
    for j in range(1, max_layers + 1):
        limit = offload_token_limit(capacity, cost.layers, j / middle)
        if need <= limit:
            return Placement(k, limit, j, middle)
    return None


def place(length: int, capacity: int, cost: CostModel | None = None, offload: bool = False,
          time_cap: float | None = None) -> Placement:
    """The fewest ranks for a sequence; with ``offload``, the fewest whole layers j that achieve them.

    The ratio is limited by ``max_offload_layers`` and quantised to whole layers: r = j / (l - 2).
    With ``time_cap``, fewer ranks are taken only while the sequence's per-rank time stays within it
    (fewer ranks mean more time per rank).
    """
    best = Placement(ranks_needed(length, capacity), capacity)
    if not offload or length <= capacity or cost is None or cost.layers <= 2:
        return best
    middle = cost.layers - 2
    for j in range(1, max_offload_layers(length, capacity, cost) + 1):  # the least offloading per rank count
        limit = offload_token_limit(capacity, cost.layers, j / middle)
        k = ranks_needed(length, limit)
        if k < best.ranks and (time_cap is None or cost.seq_time(length, k) <= time_cap):
            best = Placement(k, limit, j, middle)
    return best
