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
    return replay_rings([[mb.rings for mb in rp.micro_batches] for rp in plan.ranks],
                        [r.ranks for r in plan.rings], durations)


def replay_rings(rings_of: Sequence[Sequence[Sequence[int]]], members: Sequence[Sequence[int]],
                 durations: Sequence[Sequence[float]]) -> Replay:
    """``replay`` of what it depends on alone: ``rings_of[rank][i]`` the rings of the rank's i-th
    micro-batch, ``members[g]`` ring g's ranks (so a plan under construction can be timed before
    its segments exist, ``hdp.plan.schedule.draft``).

    Ranks with the same rings and durations in the same order start every micro-batch at the same
    time (by induction over their lists), so each such class is replayed once, its rank count
    counted at every ring it reaches: a static CP group of thousands of members is one class."""
    n = len(rings_of)
    klass: list[int] = []
    reps: list[int] = []  # a representative rank per class
    count: list[int] = []
    seen: dict[tuple, int] = {}
    for r in range(n):
        key = (tuple(map(tuple, rings_of[r])), tuple(durations[r]))
        c = seen.get(key)
        if c is None:
            c = seen[key] = len(reps)
            reps.append(r)
            count.append(0)
        klass.append(c)
        count[c] += 1
    ring_size = [len(m) for m in members]
    by_members: dict[tuple[int, ...], list[int]] = {}  # a static CP group's rings share one member set
    ring_classes = []
    for m in members:
        key = tuple(m)
        classes = by_members.get(key)
        if classes is None:
            classes = by_members[key] = list(dict.fromkeys(map(klass.__getitem__, key)))
        ring_classes.append(classes)
    clock, starts, wait = _replay_classes([rings_of[r] for r in reps], [durations[r] for r in reps], count,
                                          ring_size, ring_classes, reps)
    return Replay(tuple(clock[c] for c in klass), tuple(starts[c] for c in klass), tuple(wait[c] for c in klass))


def _replay_classes(rings_of: list, durations: list, count: list[int], ring_size: list[int],
                    ring_classes: list[list[int]], reps: list[int]) -> tuple[list[float], list[tuple], list[float]]:
    """The replay loop over classes of identical ranks (``replay_rings``); ``reps[c]``: a rank of class c."""
    n = len(rings_of)
    arrived = [0] * len(ring_size)
    ring_start = [0.0] * len(ring_size)  # latest arrival so far; final when the last member arrives
    ptr = [0] * n
    clock = [0.0] * n
    wait = [0.0] * n
    starts: list[list[float]] = [[] for _ in range(n)]
    registered = [False] * n
    queue = deque(range(n))
    while queue:
        r = queue.popleft()
        mine, times, out = rings_of[r], durations[r], starts[r]
        while ptr[r] < len(mine):
            rings = mine[ptr[r]]
            start = clock[r]
            if rings:
                if not registered[r]:
                    registered[r] = True
                    for g in rings:
                        arrived[g] += count[r]
                        if start > ring_start[g]:
                            ring_start[g] = start
                        if arrived[g] == ring_size[g]:
                            queue.extend(ring_classes[g])
                if any(arrived[g] < ring_size[g] for g in rings):
                    break  # woken again when the last member of the ring arrives
                registered[r] = False
                start = max(ring_start[g] for g in rings)
                wait[r] += start - clock[r]
            out.append(start)
            clock[r] = start + times[ptr[r]]
            ptr[r] += 1
    stuck = [r for r in range(n) if ptr[r] < len(rings_of[r])]
    if stuck:
        r = stuck[0]
        raise DeadlockError(
            f"rank {reps[r]} waits forever at micro-batch {ptr[r]} (rings {list(rings_of[r][ptr[r]])}); "
            "ring ids must increase along every rank's list (docs/plan-format.md rule 5)"
        )
    return clock, [tuple(x) for x in starts], wait
