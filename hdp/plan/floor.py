"""``joint_floor``: a communication-aware lower bound on the predicted step time of every plan.

The area floor (``hdp.plan.estimate.area_floor``) spreads rank-seconds evenly and forgets that a
long sequence cannot finish sooner than its ring lets it. The joint floor is the smallest T with

* every sequence i on some ring size k (at least its fewest ranks with the most offloading) whose
  member time t_i(k) = compute + micro-batch overhead + the smallest exposed ring transfer of any
  shape k members can have is at most T, and
* the rank-seconds at those sizes, sum_i k_i (compute_i(k_i) + exposure_i(k_i)), at most N T.

Every plan meets both with T = its predicted step time (docs/plan-format.md, "What the bounds
cover", has the proof), so no plan is predicted faster. The sizes are not fixed before the sum: each
sequence takes the size with the least rank-seconds among those within T, which is what makes the
floor joint.

The cost model's rank-seconds k compute(k) are not monotone in k (the GEMM table falls past 4,096
rows), so no size may be skipped unseen: every k from the fewest to N is either evaluated exactly or
covered by a range whose rank-seconds and member time are bounded from below
(``_range_area``: the efficiency tables are piecewise linear in log size, so their largest value over
a range is at an end or a measured point inside it).
"""

from __future__ import annotations

import math
from typing import Sequence

from hdp.plan.cost.cost_model import ATTN_FWD_SHARE, CostModel
from hdp.plan.cost.ringcomm import BF16, Links, exposed_ring, links_of
from hdp.plan.cost.topology import Topology, two_level_widths
from hdp.plan.schedule.sharding import place

GROWTH = 1.02
"""Ranges of ring sizes bounded at once grow by 2%: ~400 ranges from 8 to 16,384 ranks."""
LEAST_GROWTH = 1.25
"""Coarser ranges for a sequence's least rank-seconds at any size: the tables' efficiency mostly
falls with block size, so the least is at the fewest ranks and wide ranges lose little."""


def _gemm_groups(cost: CostModel) -> list[tuple[float, float]]:
    """(linear FLOPs per token and layer, rows per token) of each GEMM group ``linear_layer_time`` times."""
    m = cost.model
    if not m.is_moe:
        return [(m.linear_flops_per_token_layer, 1.0)]
    ef = m.expert_flops_per_token_layer
    return [(m.linear_flops_per_token_layer - ef, 1.0), (ef, m.top_k / m.num_experts)]


def _max_eff(points: tuple[tuple[int, float], ...], lo: float, hi: float, eff) -> float:
    """The largest ``eff`` (piecewise linear in log size over ``points``) on sizes [lo, hi]."""
    best = max(eff(lo), eff(hi))
    for x, y in points:
        if lo < x < hi:
            best = max(best, y)
    return best


def _range_area(cost: CostModel, groups: list[tuple[float, float]], length: int, a: int, b: int) -> float:
    """A lower bound on k * seq_time(length, k) over ring sizes 2 <= a <= k <= b.

    k * seq_time = layers * R(attn_layer_time(L, L / 2k), k * linear_layer_time(L / k)) with R
    increasing in both; each term is FLOPs over an efficiency at a size inside the range, at most the
    range's largest efficiency. Ring members (k >= 2) hold blocks of L / 2k and L / k rows."""
    dev = cost.device
    flops = 3.5 * cost.model.attention_flops_fwd(length) / cost.tp
    attn = flops / (_max_eff(dev.attn_tflops, length / (2 * b), length / (2 * a), dev.attn_efficiency) * 1e12)
    lin = 0.0
    for per_token, rows in groups:
        top = _max_eff(dev.gemm_tflops, max(length / b * rows, 1.0), max(length / a * rows, 1.0), dev.gemm_efficiency)
        lin += 3.0 * per_token * length / cost.tp / (top * 1e12)
    return cost.layers * cost._recomputed(attn, lin)


def min_exposure_s(cost: CostModel, topology: Topology, length: int, k: int) -> float:
    """The least exposed ring transfer of one member over every shape k members can have and every
    algorithm a ring may record: one node (k <= node) or several, flat or bidirectional, and every
    two-level grid m x g (``hdp.plan.cost.ringcomm.member_exposure_s``, which the estimate charges)."""
    if k <= 1:
        return 0.0
    links: Links = links_of(topology)
    attn = cost.attn_layer_time(length, doc_len=length / (2 * k)) / k
    kv = length / k * 2 * cost.model.kv_dim * BF16 / cost.tp
    fwd, bwd = ATTN_FWD_SHARE * attn / k, (1 - ATTN_FWD_SHARE) * attn / k
    node = topology.ranks_per_node
    best = math.inf
    for m, g in ([(1, k)] if k <= node else []) + [(2, 0)]:  # one node; several (flat rings: any number)
        for algo in ("flat", "bidirectional"):
            best = min(best, exposed_ring(algo, k, m, g, kv, fwd, bwd, links))
    for g in two_level_widths(k, node):
        best = min(best, exposed_ring("two-level", k, k // g, g, kv, fwd, bwd, links))
    return cost.layers * best


class _Sequence:
    """Member time and rank-seconds of one sequence on k ranks, exact or bounded over a range."""

    def __init__(self, cost: CostModel, topology: Topology | None, length: int, fewest: int, num_ranks: int,
                 groups: list[tuple[float, float]]) -> None:
        self.cost, self.topology, self.length, self.fewest, self.num_ranks = cost, topology, length, fewest, num_ranks
        self.groups = groups

    def exact(self, k: int) -> tuple[float, float]:
        c = self.cost.seq_time(self.length, k)
        x = min_exposure_s(self.cost, self.topology, self.length, k) if self.topology is not None else 0.0
        return c + x + self.cost.micro_batch_overhead(k), k * (c + x)

    def ranges(self, growth: float = GROWTH) -> list[tuple[int, int]]:
        """[a, b] covering fewest+1 .. num_ranks, growing by ``growth``; the last one starts where
        the blocks are smaller than every measured size (the tables are flat below it)."""
        dev = self.cost.device
        flat = min(2 * dev.attn_tflops[0][0], *(dev.gemm_tflops[0][0] / r for _, r in self.groups))
        out, a = [], max(self.fewest + 1, 2)
        while a <= self.num_ranks:
            b = self.num_ranks if self.length <= a * flat else min(self.num_ranks, max(a, math.ceil(a * growth)))
            out.append((a, b))
            a = b + 1
        return out

    def bounded(self, a: int, b: int) -> tuple[float, float]:
        """(member time, rank-seconds) lower bounds over k in [a, b]: exposure >= 0, overhead grows with k."""
        area = _range_area(self.cost, self.groups, self.length, a, b)
        return area / b + self.cost.micro_batch_overhead(a), area

    def least_area(self) -> float:
        """A lower bound on its rank-seconds at any size (exact at the fewest, bounded beyond)."""
        low = self.exact(self.fewest)[1]
        for a, b in self.ranges(LEAST_GROWTH):
            low = min(low, self.bounded(a, b)[1])
        return low


def joint_floor(lengths: Sequence[int], num_ranks: int, capacity: int, cost: CostModel,
                topology: Topology | None = None, upper: float | None = None) -> float:
    """The joint floor of the module docstring, in the planner's cost-model seconds.

    ``topology``: ring transfers as ``Draft.estimate`` sees them (None: no transfers, as plans
    estimated without one). ``upper``: a predicted step time some plan reaches (the floor is at
    most it); it only prunes sizes that cannot matter, the result is the same."""
    fewest: dict[int, int] = {}
    groups = _gemm_groups(cost)
    seqs = []
    for n in lengths:
        if n not in fewest:
            fewest[n] = place(n, capacity, cost, offload=True).ranks
        if fewest[n] > num_ranks:
            return math.inf
        seqs.append(_Sequence(cost, topology, n, fewest[n], num_ranks, groups))
    least: dict[int, float] = {}
    for s in seqs:
        if s.length not in least:
            least[s.length] = s.least_area()
    total_least = math.fsum(least[s.length] for s in seqs)
    start = total_least / num_ranks
    # Sequences whose fewest ranks already finish within ``start`` never constrain T: their least area counts.
    long = [s for s in seqs if s.exact(s.fewest)[0] > start]
    if not long:
        return start
    rest = total_least - math.fsum(least[s.length] for s in long)
    bounded = [[s.exact(s.fewest)] + [s.bounded(a, b) for a, b in s.ranges()] for s in long]
    if upper is None:
        upper = _sweep([[s.exact(k) for k in [s.fewest] + [b for _, b in s.ranges()]] for s in long], rest, num_ranks)
    if math.isinf(upper):
        return upper
    lower = _sweep(bounded, rest, num_ranks)
    # At T <= upper each other long sequence takes at least its bounded least area within upper.
    within = [min((a for t, a in m if t <= upper), default=math.inf) for m in bounded]
    others = math.fsum(within)
    menus = [_full_menu(s, lower, upper, num_ranks * upper - rest - (others - w)) for s, w in zip(long, within)]
    return _sweep(menus, rest, num_ranks)


def _full_menu(s: _Sequence, lower: float, upper: float, budget: float) -> list[tuple[float, float]]:
    """Every size of ``s`` that can matter at a T in [lower, upper], exactly; a range is left out
    when its bounds say no size in it is within ``upper`` or ``budget`` rank-seconds, or when a
    size already evaluated is within ``lower`` with no more rank-seconds than the range's bound
    (at every T >= lower that size is as good)."""
    options = [s.exact(s.fewest)]
    dominant = options[0][1] if options[0][0] <= lower else math.inf
    for a, b in s.ranges():
        t, area = s.bounded(a, b)
        if t <= upper and area <= budget and area < dominant:
            for k in range(a, b + 1):
                options.append(s.exact(k))
                if options[-1][0] <= lower:
                    dominant = min(dominant, options[-1][1])
    return options


def _sweep(menus: list[list[tuple[float, float]]], rest: float, num_ranks: int) -> float:
    """The smallest T at which every menu (options (member time, rank-seconds)) has an option within
    T and ``rest`` plus each menu's least rank-seconds within T is at most N T.

    The sum only changes at the options' times, so from one time to the next it is a constant G and
    the smallest T there is max(time, G / N): one pass over the options in time order."""
    events = sorted((t, a, i) for i, m in enumerate(menus) for t, a in m)
    least = [math.inf] * len(menus)
    missing, total = len(menus), rest
    for j, (t, a, i) in enumerate(events):
        if a < least[i]:
            if least[i] == math.inf:
                missing -= 1
                total += a
            else:
                total += a - least[i]
            least[i] = a
        if missing or (j + 1 < len(events) and events[j + 1][0] == t):
            continue
        if j + 1 == len(events) or max(t, total / num_ranks) < events[j + 1][0]:
            return max(t, math.fsum([rest, *least]) / num_ranks)  # the running sum, without its rounding
    return math.inf
