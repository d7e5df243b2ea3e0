"""Where ranks sit (nodes) and which ring algorithm a ring gets: node-aware member choice.

HDP rank ``r`` is on node ``r // ranks_per_node`` (``Plan.gpus_per_node``). A ring step that
crosses nodes goes over a NIC (~9x slower than NVLink), so the planner places rings by node:

* a ring of k <= ranks_per_node goes inside one node when one has k free ranks (best fit: the
  node with the fewest free ranks that still holds it);
* ``two-level`` rings want m nodes x g members, the same g on every node: the largest divisor g of
  k (2 <= g <= ranks_per_node) for which m = k / g nodes have g free ranks (best fit again);
* otherwise whole free nodes first, then the remainder on the nodes with the most free ranks,
  never leaving a node with a single member (a single member makes that node's NIC carry the
  hop alone and gives two-level nothing to do inside the node).

Members are always listed in increasing rank order, i.e. node by node and, inside a node, by local
index (rank % ranks_per_node): the zig-zag position of a member is its index in that list, which
is what the runtime's two-level ring assumes (docs/plan-format.md, fields hdp adds).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

from hdp.plan.types import RING_ALGOS

NVLINK_GBPS = 450.0
INTER_GBPS = 50.0
NVLINK_LATENCY_S = 2e-6
INTER_LATENCY_S = 5e-6


@dataclass(frozen=True, slots=True)
class Topology:
    """What the planner knows of the cluster: ranks per node, the ring algorithm, link speeds."""

    ranks_per_node: int = 8
    ring_algo: str = "flat"
    nvlink_gbps: float = NVLINK_GBPS
    inter_gbps: float = INTER_GBPS
    nvlink_latency_s: float = NVLINK_LATENCY_S
    inter_latency_s: float = INTER_LATENCY_S
    kv_heads: int = 8
    """KV heads one rank holds (bidirectional splits them in two halves; one head: flat)."""

    def __post_init__(self) -> None:
        if self.ranks_per_node < 1:
            raise ValueError(f"gpus_per_node must be >= 1, got {self.ranks_per_node}")
        if self.ring_algo not in RING_ALGOS:
            raise ValueError(f"ring algo {self.ring_algo!r} is not one of {', '.join(RING_ALGOS)}")

    def node(self, rank: int) -> int:
        return rank // self.ranks_per_node


def node_counts(members: tuple[int, ...] | list[int], ranks_per_node: int) -> list[int]:
    """Members per node, node by node in rank order."""
    counts: dict[int, int] = {}
    for r in sorted(members):
        counts[r // ranks_per_node] = counts.get(r // ranks_per_node, 0) + 1
    return list(counts.values())


def ring_shape(members: tuple[int, ...] | list[int], ranks_per_node: int) -> tuple[int, int]:
    """(nodes m, members per node g) when every node holds the same g members; g = 0 otherwise."""
    counts = node_counts(members, ranks_per_node)
    return len(counts), counts[0] if len(set(counts)) == 1 else 0


Grid = tuple[tuple[int, ...], ...]
"""``grid[a][b]``: the ring position of the b-th member on the ring's a-th node."""


def node_grid(ranks: Sequence[int], gpus_per_node: int) -> Grid | None:
    """The ring's positions as an m x g node grid, or None when the ring is not node-aligned."""
    if gpus_per_node < 1:
        return None
    by_node: dict[int, list[int]] = {}
    for pos, rank in enumerate(ranks):
        by_node.setdefault(rank // gpus_per_node, []).append(pos)
    rows = list(by_node.values())
    g = len(rows[0])
    if len(rows) < 2 or g < 2 or any(len(r) != g for r in rows):
        return None
    return tuple(tuple(r) for r in rows)


def effective_algo(algo: str, ranks: Sequence[int], gpus_per_node: int, num_kv_heads: int) -> str:
    """The algorithm a ring with these members actually runs when the plan asks for ``algo``."""
    if algo not in RING_ALGOS:
        raise ValueError(f"ring algorithm {algo!r}: expected one of {', '.join(RING_ALGOS)}")
    if algo == "two-level" and node_grid(ranks, gpus_per_node) is None:
        return "flat"
    if algo == "bidirectional" and num_kv_heads < 2:
        return "flat"
    return algo


def ring_algo_for(members: tuple[int, ...] | list[int], topo: Topology) -> str:
    """The requested algorithm where it applies to this ring, else ``flat`` (``effective_algo``)."""
    return effective_algo(topo.ring_algo, members, topo.ranks_per_node, topo.kv_heads)


def pick_members(free: list[int], k: int, topo: Topology) -> list[int]:
    """k of the ``free`` ranks for a ring, node-aware (module docstring); sorted."""
    rpn = topo.ranks_per_node
    if rpn <= 1 or k >= len(free):
        return sorted(free)[:k]
    by_node = _free_by_node(sorted(free), rpn)
    if k <= rpn:
        fits = [n for n, rs in by_node.items() if len(rs) >= k]
        if fits:
            best = min(fits, key=lambda n: (len(by_node[n]), n))
            return by_node[best][:k]
    if topo.ring_algo == "two-level":
        for g in two_level_widths(k, rpn):
            fits = sorted((n for n, rs in by_node.items() if len(rs) >= g), key=lambda n: (len(by_node[n]), n))
            if len(fits) >= k // g:
                return sorted(r for n in fits[:k // g] for r in by_node[n][:g])
    return sorted(_greedy(by_node, k))


def two_level_widths(k: int, ranks_per_node: int) -> list[int]:
    """Members per node g a two-level ring of k can have, widest first: the divisors of k with
    2 <= g <= ranks_per_node and at least two nodes (g <= k / 2)."""
    return [g for g in range(min(ranks_per_node, k // 2), 1, -1) if k % g == 0]


def _free_by_node(ranks: list[int], rpn: int) -> dict[int, list[int]]:
    """Sorted ``ranks`` grouped by node, nodes in order: one slice per node (thousands of ranks are
    free at once on large clusters; a Python step per rank made this the planner's hot spot)."""
    out: dict[int, list[int]] = {}
    i = 0
    while i < len(ranks):
        node = ranks[i] // rpn
        j = bisect.bisect_left(ranks, (node + 1) * rpn, i)
        out[node] = ranks[i:j]
        i = j
    return out


def _greedy(by_node: dict[int, list[int]], k: int) -> list[int]:
    """Whole free nodes first, then the remainder on the best-fitting node (else the fullest ones);
    a node gets a lone member only when every node left has a single free rank."""
    rpn_free = max(len(rs) for rs in by_node.values())
    left_nodes = dict(by_node)
    out: list[int] = []
    left = k
    while left > 0 and left_nodes:
        full = [n for n, rs in left_nodes.items() if len(rs) == rpn_free]
        if left >= rpn_free and full:
            n = min(full)
            take = rpn_free
        else:
            fits = [n for n, rs in left_nodes.items() if len(rs) >= left]
            if fits:
                n = min(fits, key=lambda n: (len(left_nodes[n]), n))
            else:
                n = min(left_nodes, key=lambda n: (-len(left_nodes[n]), n))
            take = min(len(left_nodes[n]), left)
        if left - take == 1 and take >= 3:
            take -= 1  # leave two for the next node rather than one
        out.extend(left_nodes.pop(n)[:take])
        left -= take
    return out


def ring_stretch(cost, topo: Topology, length: int, members) -> float:
    """(compute + exposed transfer) / compute of a ring member on these members: what the scheduler
    multiplies a ring's weight by, so that it sees ring communication (work or time measure alike)."""
    from hdp.plan.cost.ringcomm import links_of, member_exposure_s

    k = len(members)
    compute = cost.seq_time(length, k)
    if compute <= 0 or k <= 1:
        return 1.0
    algo = ring_algo_for(members, topo)
    m, g = ring_shape(members, topo.ranks_per_node)
    return (compute + member_exposure_s(cost, length, k, algo, m, g, links_of(topo))) / compute
