"""Critical rings: more ranks than the fewest for the sequences that alone would set the step.

The fewest ranks (with offloading) free the most ranks for other work, which is what a batch of
many mid-length sequences needs. But when a few sequences are so long that each one's per-member
time exceeds what the whole batch needs per rank, the step is their ring's time and the ranks they
saved sit idle at the end. A ring's compute divides over its members (zig-zag: equal shares), so
such a sequence loses nothing by taking more ranks as long as its transfers stay hidden (the ring
algorithm's exposure, ``hdp.plan.cost.ringcomm``) and the rings still run side by side.

``Widening`` finds the smallest target step time T for which

* every long sequence has a ring size k (its fewest ranks, or more) with per-member time t(k) <= T
  (compute + micro-batch overhead + exposed transfers for the shape it will get),
* the rank-seconds fit: sum k t(k) <= N T, and
* the items longer than T / 2, which cannot follow one another on a rank within T, fit side by
  side: their k add up to at most N,

and gives each sequence the smallest such k (whole nodes for two-level rings), holding the fewest
offloaded layers that k still needs. ``widened_candidates`` returns that and a few looser targets;
``make_plan`` (strategy ``hdp-wide``) keeps the fastest of them and the fewest-ranks plan by its
estimate (ring transfers included), so it is never predicted slower than ``hdp``. Such plans do not
claim ``fewest_ranks``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.cost.ringcomm import links_of, member_exposure_s
from hdp.plan.schedule.sharding import Placement, hold
from hdp.plan.cost.topology import Topology, two_level_widths

LADDER = (1.0, 1.04, 1.08, 1.12)
"""Targets tried, as multiples of the smallest feasible one."""
GROWTH = 1.01
"""Ring sizes tried grow by at least 1% (or one node) at a time: the search is over a few hundred
sizes per sequence even on 16,384 ranks."""


@dataclass(frozen=True, slots=True)
class _Frontier:
    """A sequence's ring sizes where the per-member time falls: ``ks`` increasing, ``ts`` decreasing,
    ``held`` the placement of each (the first is the base placement)."""

    ks: list[int]
    ts: list[float]
    held: list[Placement]

    def smallest_within(self, target: float) -> int | None:
        """Index of the smallest ring size whose time is at most ``target`` (None: none is)."""
        i = bisect.bisect_left(self.ts, -target, key=lambda t: -t)
        return i if i < len(self.ks) else None


def member_time(cost: CostModel, topology: Topology, length: int, k: int) -> float:
    """Per-member seconds of a sequence on k ranks: compute, micro-batch overhead, and the exposed
    transfers of the shape the planner gives it on free nodes (``topology.pick_members``): one node
    when it fits; two-level rings on m x g with g the largest divisor of k up to the node size
    (m >= 2), flat when there is none; flat and bidirectional rings over ceil(k / node) nodes."""
    t = cost.seq_time(length, k) + cost.micro_batch_overhead(k)
    if k <= 1:
        return t
    node = topology.ranks_per_node
    algo, nodes, per_node = topology.ring_algo, max(1, math.ceil(k / node)), 0
    if algo == "bidirectional" and topology.kv_heads < 2:
        algo = "flat"
    if algo == "two-level" and k > node:
        per_node = next(iter(two_level_widths(k, node)), 0)
        if per_node:
            nodes = k // per_node
        else:
            algo = "flat"
    elif algo == "two-level":
        algo = "flat"  # inside one node the inner ring is the ring
    return t + member_exposure_s(cost, length, k, algo, nodes, per_node, links_of(topology))


def _sizes(start: int, num_ranks: int, node: int) -> list[int]:
    """Ring sizes to try from ``start``: growing by GROWTH, whole nodes once wider than a node."""
    out, k = [], start
    while k <= num_ranks:
        out.append(k)
        nxt = max(k + 1, math.ceil(k * GROWTH))
        if node > 1 and nxt > node:
            nxt = -(-nxt // node) * node
        k = nxt
    return out


def _frontier(cost: CostModel, topology: Topology, length: int, base: Placement, capacity: int,
              num_ranks: int) -> _Frontier:
    node = topology.ranks_per_node if topology.ring_algo == "two-level" else 1
    ks, ts, held = [base.ranks], [member_time(cost, topology, length, base.ranks)], [base]
    for k in _sizes(base.ranks, num_ranks, node)[1:]:
        t = member_time(cost, topology, length, k)
        if t < ts[-1] and (p := hold(length, k, capacity, cost, base.offload_layers)) is not None:
            ks.append(k)
            ts.append(t)
            held.append(p)
    return _Frontier(ks, ts, held)


class Widening:
    """The target search of the module docstring over one batch's placements."""

    def __init__(self, lengths: list[int], placements: list[Placement], num_ranks: int, capacity: int,
                 cost: CostModel, topology: Topology) -> None:
        self.lengths, self.placements, self.num_ranks = lengths, placements, num_ranks
        base_t = [member_time(cost, topology, n, p.ranks) for n, p in zip(lengths, placements)]
        area = sum(p.ranks * t for p, t in zip(placements, base_t))
        self.mean = area / num_ranks
        """The base placements' rank-seconds per rank: where the target search starts."""
        self.longest = max(base_t)
        """The base placements' longest per-member time."""
        self.long = [i for i, t in enumerate(base_t) if t > self.mean]
        self.fronts = {i: _frontier(cost, topology, lengths[i], placements[i], capacity, num_ranks) for i in self.long}
        self.rest_area = area - sum(placements[i].ranks * base_t[i] for i in self.long)

    def sizes(self, target: float) -> dict[int, int] | None:
        """Each long sequence's frontier index for ``target`` (its smallest ring size within it),
        if the step can fit them all."""
        at: dict[int, int] = {}
        total, side_by_side = self.rest_area, 0
        for i in self.long:
            j = self.fronts[i].smallest_within(target)
            if j is None:
                return None
            k, t = self.fronts[i].ks[j], self.fronts[i].ts[j]
            at[i] = j
            total += k * t
            if t > target / 2:
                side_by_side += k
        if total > self.num_ranks * target or side_by_side > self.num_ranks:
            return None
        return at

    def target(self) -> float | None:
        """The smallest feasible target (to 0.1%), or None when widening cannot shorten the step."""
        lo, hi = self.mean, self.longest
        if hi <= lo * (1 + 1e-9) or self.sizes(hi) is None:
            return None
        while hi - lo > 1e-3 * hi:
            mid = (lo + hi) / 2
            if self.sizes(mid) is None:
                lo = mid
            else:
                hi = mid
        return hi

    def placements_at(self, target: float) -> list[Placement]:
        """The base placements with the long sequences on their ring sizes for ``target``."""
        out = list(self.placements)
        for i, j in (self.sizes(target) or {}).items():
            out[i] = self.fronts[i].held[j]
        return out


def widened_candidates(lengths: list[int], placements: list[Placement], num_ranks: int, capacity: int,
                       cost: CostModel, topology: Topology) -> list[list[Placement]]:
    """Widened placements for the smallest feasible target and a few looser ones (``LADDER``): the
    scheduler packs rigid rings less tightly than the feasibility test assumes, so the best plan is
    often at a slightly looser target. Empty when widening cannot shorten the step."""
    w = Widening(lengths, placements, num_ranks, capacity, cost, topology)
    target = w.target()
    if target is None:
        return []
    out: list[list[Placement]] = []
    for step in LADDER:
        p = w.placements_at(target * step)
        if p != placements and p not in out:
            out.append(p)
    return out
