"""The ``dp`` balance scheduler: list scheduling in time with backfilling (the HPC "EASY" idea).

Rings are rigid jobs (k ranks at once, the same time t on each member), whole sequences are jobs of
one rank. Jobs are taken largest time first. The clock advances over the ranks' finish times:

* the next ring starts as soon as k ranks are free;
* while it waits for ranks, its *shadow time* S (when k ranks will be free) is known, and the free
  ranks are backfilled with the largest smaller rings and whole sequences that end by S, so waiting
  becomes work instead of idle time;
* when no ring is left, whole sequences go largest-first to the rank free soonest (LPT).

Every rank's jobs are in time order, and ring ids are given in start-time order, so ring ids increase
along every rank's list (docs/plan-format.md rule 5). Replaying the plan (a ring starts when its last member
arrives) can only start rings earlier than scheduled, never later.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

from typing import Callable

from hdp.plan.schedule.free_ranks import FreeRanks
from hdp.plan.schedule.sharding import Placement
from hdp.plan.schedule.balance_measure import Weights

Stretch = Callable[[int, tuple[int, ...]], float]
"""(sequence, members) -> how much longer than its compute a ring member runs (ring transfers)."""


@dataclass(slots=True)
class Job:
    seq: int
    time: float
    ranks: int
    start: float = 0.0
    members: tuple[int, ...] = ()


class _Locals:
    """Whole-sequence jobs by time, for 'largest that fits' queries."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = sorted(jobs, key=lambda j: (j.time, -j.seq))
        self.times = [j.time for j in self.jobs]

    def __len__(self) -> int:
        return len(self.jobs)

    def take_fitting(self, room: float) -> Job | None:
        i = bisect.bisect_right(self.times, room) - 1
        if i < 0:
            return None
        del self.times[i]
        return self.jobs.pop(i)

    def take_largest(self) -> Job:
        self.times.pop()
        return self.jobs.pop()


def schedule(lengths: list[int], placements: list[Placement], weights: Weights, num_ranks: int,
             free: FreeRanks | None = None, stretch: Stretch | None = None) -> tuple[list[list[Job]], list[Job]]:
    """Per-rank job lists in time order, and the rings in start order.

    ``free``: every rank, free, choosing a ring's members node by node (``FreeRanks`` with a
    topology; default: the lowest free ranks); ``stretch`` makes
    a ring's time its compute plus exposed transfers, first for an ideal placement (ranks 0..k-1),
    then for the members it gets."""
    base = {i: weights.ring(n, p.ranks) for i, (n, p) in enumerate(zip(lengths, placements)) if p.ranks > 1}
    rings = sorted(
        (Job(i, t * (stretch(i, tuple(range(placements[i].ranks))) if stretch else 1.0), placements[i].ranks)
         for i, t in base.items()),
        key=lambda j: (-j.time, -j.ranks, j.seq),
    )
    locals_ = _Locals([
        Job(i, weights.whole(n) + (weights.overhead() if p.offload_layers else 0.0), 1)  # offloaded: own micro-batch
        for i, (n, p) in enumerate(zip(lengths, placements)) if p.ranks == 1
    ])
    per_rank: list[list[Job]] = [[] for _ in range(num_ranks)]
    started: list[Job] = []
    free = free if free is not None else FreeRanks(num_ranks)  # the ranks free now
    busy: list[tuple[float, int]] = []  # (finish, rank), sorted: the k-th to finish is busy[k - 1]
    clock = 0.0

    def run(job: Job, at: float, members: list[int]) -> float:
        """Record a job; the caller tracks when its ranks are free again."""
        job.start, job.members = at, tuple(sorted(members))
        if job.ranks > 1 and stretch is not None:
            job.time = base[job.seq] * stretch(job.seq, job.members)
        for r in members:
            per_rank[r].append(job)
        if job.ranks > 1:
            started.append(job)
        return at + job.time

    def release(until: float) -> None:
        j = bisect.bisect_right(busy, (until, num_ranks))
        for _, r in busy[:j]:
            free.add(r)
        del busy[:j]

    pending = rings
    while pending:
        release(clock)
        head = pending[0]
        if head.ranks <= len(free):
            pending.pop(0)
            members = free.pick(head.ranks)
            end = run(head, clock, members)
            for r in members:
                bisect.insort(busy, (end, r))
            continue
        need = head.ranks - len(free)
        shadow = busy[need - 1][0]
        for end, r in _backfill(pending, locals_, free, clock, shadow, run):
            bisect.insort(busy, (end, r))
        clock = shadow

    # No ring left: whole sequences largest first onto the rank that is free soonest.
    avail = [(clock, r) for r in free.ranks()] + busy
    heapq.heapify(avail)
    while len(locals_):
        job = locals_.take_largest()
        at, r = heapq.heappop(avail)
        heapq.heappush(avail, (run(job, at, [r]), r))
    started.sort(key=lambda j: (j.start, j.members[0]))
    return per_rank, started


def _backfill(pending: list[Job], locals_: _Locals, free: FreeRanks, clock: float, shadow: float,
              run) -> list[tuple[float, int]]:
    """Fill the free ranks' window [clock, shadow) with rings and whole sequences that end by then.

    Returns (finish, rank) of the ranks given work; the others stay in ``free`` and idle.
    """
    window = shadow - clock
    at = {r: clock for r in free.ranks()}
    # Smaller rings first (they need several ranks at once): the largest that fits, in queue order.
    # The queue is sorted by time, largest first: skip to the first ring that ends by the shadow.
    i = bisect.bisect_left(pending, -window, lo=1, key=lambda j: -j.time)
    while i < len(pending) and len(free) >= 2:
        job = pending[i]
        if job.ranks <= len(free) and job.time <= window:
            pending.pop(i)
            members = free.pick(job.ranks)
            end = run(job, clock, members)
            for r in members:
                at[r] = end
            continue
        i += 1
    # Then whole sequences, each rank filling what is left of its window greedily.
    for r in at:
        while (job := locals_.take_fitting(shadow - at[r])) is not None:
            at[r] = run(job, at[r], [r])
    worked = []  # the ranks given work leave ``free``; the others stay
    for r, end in at.items():
        if end > clock:
            worked.append((end, r))
            if r in free:
                free.remove(r)
        elif r not in free:
            free.add(r)
    return worked
