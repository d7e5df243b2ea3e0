"""The scheduler's free ranks, kept by node so that choosing a ring's members costs O(nodes) at worst.

``backfill.schedule`` asks thousands of times for k members among the ranks free now, picked as
``hdp.plan.cost.topology.pick_members`` picks them. Handing it the whole free list each time meant
sorting and grouping up to 16,384 ranks per ring (the planner's hot spot at that scale). Here the
free ranks are held per node and the nodes in buckets by how many ranks they have free, updated
as ranks are taken and released, and ``pick`` answers exactly what ``pick_members`` answers on the
sorted free list (tests/plan/test_plan_speed.py checks it on random histories).
"""

from __future__ import annotations

import bisect

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.cost.topology import Topology, _greedy, node_counts, ring_stretch, two_level_widths


class FreeRanks:
    """A set of free ranks with ``pick_members``' choice; without a topology, the lowest ranks."""

    def __init__(self, num_ranks: int, topology: Topology | None = None) -> None:
        rpn = topology.ranks_per_node if topology is not None else 1
        self.rpn = max(rpn, 1)
        self.node_aware = topology is not None and rpn > 1
        self.two_level = topology is not None and topology.ring_algo == "two-level"
        nodes = -(-num_ranks // self.rpn)
        self.on: list[list[int]] = [list(range(n * self.rpn, min((n + 1) * self.rpn, num_ranks))) for n in range(nodes)]
        self.nonempty = list(range(nodes))
        """Nodes with a free rank, in order."""
        self.bucket: list[list[int]] = [[] for _ in range(self.rpn + 1)]
        """``bucket[c]``: the nodes with exactly c free ranks, in order."""
        for n, rs in enumerate(self.on):
            self.bucket[len(rs)].append(n)
        self.size = num_ranks

    def __len__(self) -> int:
        return self.size

    def __contains__(self, rank: int) -> bool:
        rs = self.on[rank // self.rpn]
        i = bisect.bisect_left(rs, rank)
        return i < len(rs) and rs[i] == rank

    def ranks(self) -> list[int]:
        """Every free rank, in increasing order."""
        on = self.on
        return [r for n in self.nonempty for r in on[n]]

    def _move(self, node: int, before: int, after: int) -> None:
        b = self.bucket[before]
        if before:
            del b[bisect.bisect_left(b, node)]
        else:
            bisect.insort(self.nonempty, node)
        if after:
            bisect.insort(self.bucket[after], node)
        else:
            del self.nonempty[bisect.bisect_left(self.nonempty, node)]

    def add(self, rank: int) -> None:
        node = rank // self.rpn
        rs = self.on[node]
        bisect.insort(rs, rank)
        self._move(node, len(rs) - 1, len(rs))
        self.size += 1

    def remove(self, rank: int) -> None:
        node = rank // self.rpn
        rs = self.on[node]
        del rs[bisect.bisect_left(rs, rank)]
        self._move(node, len(rs) + 1, len(rs))
        self.size -= 1

    def take(self, members: list[int]) -> list[int]:
        for r in members:
            self.remove(r)
        return members

    def pick(self, k: int) -> list[int]:
        """Take k free ranks for a ring: ``pick_members(sorted(free), k, topology)``, or the lowest k."""
        if not self.node_aware or k >= self.size:
            out: list[int] = []
            for n in self.nonempty:
                out.extend(self.on[n][:k - len(out)])
                if len(out) >= k:
                    break
            return self.take(out)
        rpn = self.rpn
        if k <= rpn:
            for c in range(k, rpn + 1):  # the node with the fewest free ranks that still holds k
                if self.bucket[c]:
                    return self.take(self.on[self.bucket[c][0]][:k])
        if self.two_level:
            for g in two_level_widths(k, rpn):
                fits: list[int] = []  # nodes with >= g free, by (free ranks, node)
                for c in range(g, rpn + 1):
                    fits.extend(self.bucket[c])
                    if len(fits) >= k // g:
                        return self.take(sorted(r for n in fits[:k // g] for r in self.on[n][:g]))
        return self.take(sorted(_greedy({n: self.on[n] for n in self.nonempty}, k)))


def memo_stretch(cost: CostModel, topology: Topology, lengths: list[int], memo: dict):
    """``ring_stretch`` for the scheduler, once per (length, members per node): a ring's algorithm,
    shape and transfers depend on its members only through how many sit on each node, and the
    drafts of one batch ask for the same rings again and again."""
    rpn = topology.ranks_per_node

    def stretch(seq: int, members: tuple[int, ...]) -> float:
        per_node = (len(members),) if members[0] // rpn == members[-1] // rpn else tuple(node_counts(members, rpn))
        key = (lengths[seq], per_node)
        t = memo.get(key)
        if t is None:
            t = memo[key] = ring_stretch(cost, topology, lengths[seq], members)
        return t
    return stretch
