"""Replay a plan's micro-batch order with ring synchronisation: the makespan of docs/plan-format.md.

Each rank runs its list in order; a micro-batch that carries rings starts only when every member of
each of its rings has reached it (rule 5). The same replay serves the work measure (outside
validators' cost), the planner's own time estimate and the simulator's ring-wait accounting.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

from hdp.plan.types import Plan


@dataclass(frozen=True, slots=True)
class Replay:
    finish: tuple[float, ...]
    """When each rank finishes its last micro-batch."""
    starts: tuple[tuple[float, ...], ...]
    """Start time of every micro-batch, per rank."""
    wait: tuple[float, ...]
    """Time each rank spent waiting at rings for late members."""

    @property
    def makespan(self) -> float:
        return max(self.finish, default=0.0)


class DeadlockError(ValueError):
    """The micro-batch order cannot complete: some ring waits on a member that waits on it."""


def replay(plan: Plan, durations: Sequence[Sequence[float]]) -> Replay:
    """Run every rank's list; ``durations[rank][i]`` is how long its i-th micro-batch takes."""
    n = plan.num_ranks
    mbs = [rp.micro_batches for rp in plan.ranks]
    ring_size = [r.size for r in plan.rings]
    arrivals: list[list[float]] = [[] for _ in plan.rings]
    ring_start = [0.0] * len(plan.rings)  # latest arrival, set when the last member arrives
    ptr = [0] * n
    clock = [0.0] * n
    wait = [0.0] * n
    starts: list[list[float]] = [[] for _ in range(n)]
    registered = [False] * n
    queue = deque(range(n))
    while queue:
        r = queue.popleft()
        while ptr[r] < len(mbs[r]):
            mb = mbs[r][ptr[r]]
            start = clock[r]
            if mb.rings:
                if not registered[r]:
                    registered[r] = True
                    for g in mb.rings:
                        arrivals[g].append(clock[r])
                        if len(arrivals[g]) == ring_size[g]:
                            ring_start[g] = max(arrivals[g])
                            queue.extend(plan.rings[g].ranks)
                if any(len(arrivals[g]) < ring_size[g] for g in mb.rings):
                    break  # woken again when the last member of the ring arrives
                registered[r] = False
                start = max(ring_start[g] for g in mb.rings)
                wait[r] += start - clock[r]
            starts[r].append(start)
            clock[r] = start + durations[r][ptr[r]]
            ptr[r] += 1
    stuck = [r for r in range(n) if ptr[r] < len(mbs[r])]
    if stuck:
        r = stuck[0]
        raise DeadlockError(
            f"rank {r} waits forever at micro-batch {ptr[r]} (rings {list(mbs[r][ptr[r]].rings)}); "
            "ring ids must increase along every rank's list (docs/plan-format.md rule 5)"
        )
    return Replay(tuple(clock), tuple(tuple(s) for s in starts), tuple(wait))
