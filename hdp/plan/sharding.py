"""Data-aware sharding: how many ranks a sequence needs, and which tokens each ring member holds."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hdp.plan.cost import CostModel
from hdp.plan.types import Segment


class PlanError(ValueError):
    """User input the planner cannot plan; the message says what to do."""


def zigzag_piece(length: int, ring_size: int, j: int) -> tuple[int, int]:
    """Piece j of 2k: ``[floor(j*L/2k), floor((j+1)*L/2k))``."""
    n = 2 * ring_size
    return (j * length) // n, ((j + 1) * length) // n


def member_segments(seq: int, length: int, ring_size: int, position: int) -> tuple[Segment, ...]:
    """The zig-zag pieces ``position`` and ``2k-1-position`` of a sequence; empty pieces are dropped.

    Pairing an early piece with its mirror gives every member the same causal-attention work.
    """
    pieces = (zigzag_piece(length, ring_size, position), zigzag_piece(length, ring_size, 2 * ring_size - 1 - position))
    return tuple(Segment(seq, a, b) for a, b in pieces if b > a)


def member_tokens(length: int, ring_size: int, position: int) -> int:
    return sum(s.num_tokens for s in member_segments(0, length, ring_size, position))


def member_shares(length: int, ring_size: int) -> list[int]:
    """Tokens each ring member holds (pieces i and 2k-1-i); within 2 tokens of L/k."""
    if length % ring_size == 0:
        return [length // ring_size] * ring_size  # pieces pair up to exactly L/k
    n = 2 * ring_size
    return [
        (j + 1) * length // n - j * length // n + (n - j) * length // n - (n - 1 - j) * length // n
        for j in range(ring_size)
    ]


def max_member_tokens(length: int, ring_size: int) -> int:
    return max(member_shares(length, ring_size))


@dataclass(frozen=True, slots=True)
class Placement:
    """How one sequence is held: on ``ranks`` ranks, with ``offload_ratio`` of its layers offloaded."""

    ranks: int
    offload_ratio: float
    token_limit: int


def offload_token_limit(capacity: int, layers: int, ratio: float) -> int:
    """Tokens a rank holds when ``ratio`` of its l-2 middle layers keep activations on the host.

    Memory per rank: (2 + (1-r)(l-2)) * Act(s/D) <= l * Act(C)  (DESIGN.md), so
    s/D <= C * l / (2 + (1-r)(l-2)).
    """
    if layers <= 2 or ratio <= 0:
        return capacity
    return int(capacity * layers / (2 + (1 - ratio) * (layers - 2)) + 1e-9)


def ranks_needed(length: int, token_limit: int) -> int:
    """The fewest ranks whose zig-zag pieces each fit ``token_limit``.

    This is ``ceil(L / limit)`` except when L lies within about 2k tokens below k * limit: the
    floor-rounded pieces of PLAN_FORMAT rule 2 then give one member ceil(L/k) + 1 tokens, which
    would break the capacity rule, so one more rank is used.
    """
    k = math.ceil(length / token_limit)
    while k > 1 and max_member_tokens(length, k) > token_limit:
        k += 1
    return k


def place(length: int, capacity: int, cost: CostModel | None = None, offload: bool = False,
          time_cap: float | None = None) -> Placement:
    """The fewest ranks for a sequence; with ``offload``, the smallest whole-layer ratio that achieves them.

    The ratio is limited by the copies hiding under the forward compute (CostModel.max_offload_ratio)
    and by the host memory of one device (DeviceProfile.host_mem_gib), and quantised to whole
    layers: r = j / (l - 2). With ``time_cap``, fewer ranks are taken only while the sequence's
    per-rank time stays within it (fewer ranks mean more time per rank).
    """
    best = Placement(ranks_needed(length, capacity), 0.0, capacity)
    if not offload or length <= capacity or cost is None or cost.layers <= 2:
        return best
    middle = cost.layers - 2
    j_max = math.floor(cost.max_offload_ratio(length) * middle + 1e-9)
    host = cost.device.host_mem_gib * 2**30
    while j_max > 0 and j_max * cost.act_bytes(min(length, offload_token_limit(capacity, cost.layers, j_max / middle))) > host:
        j_max -= 1  # the host must hold j offloaded layers of the tokens one rank then takes
    for j in range(1, j_max + 1):  # the least offloading for each smaller rank count
        limit = offload_token_limit(capacity, cost.layers, j / middle)
        k = ranks_needed(length, limit)
        if k < best.ranks and (time_cap is None or cost.seq_time(length, k) <= time_cap):
            best = Placement(k, j / middle, limit)
    return best
