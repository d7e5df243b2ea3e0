"""The HDP planner: fewest ranks per sequence, then a balance scheduler that equalises *time*.

Objective, per HDP rank r with P pipeline stages (P = 1 in ``dp`` mode):

    F_r = S_r / P + (P - 1) / P * M_r

where S_r is the sum of the cost-model times of r's micro-batches (rings start when their last
member arrives, so S_r includes waits) and M_r the largest of them: a 1F1B pipeline of P stages
runs each micro-batch for t/P per stage and idles (P - 1) * M_r / P in its bubble. The scheduler
minimises max_r F_r, longest-processing-time first:

1. Rings, largest per-member time first, each on the k ranks of smallest F. Ring ids follow this
   order, so they increase along every rank's list (PLAN_FORMAT rule 5: no deadlock). A member that
   arrives early leaves a gap before the ring.
2. Whole sequences (``dp``: one by one; ``pp``: packed into C-token micro-batches first so that a
   pipeline's micro-batches are alike and its bubble small), largest first: into a gap they fit
   (free time), else onto the rank of smallest F. In ``dp`` mode each rank's whole sequences are
   then packed, best-fit decreasing, into micro-batches of at most C tokens, the first of them
   into the spare capacity of the rank's last ring micro-batch.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from typing import Literal

from hdp.plan.cost import CostModel
from hdp.plan.draft import Draft, DraftMicroBatch
from hdp.plan.sharding import Placement, max_member_tokens

Balance = Literal["dp", "pp"]


@dataclass(slots=True)
class _Local:
    """Work that runs on one rank without communication: whole sequences, one micro-batch or more."""

    time: float
    seqs: list[int]
    tokens: int
    offload_ratio: float = 0.0
    token_limit: int = 0


@dataclass(slots=True)
class _Slot:
    """Free time before a ring on one rank (``before`` = index of that ring's micro-batch)."""

    rank: int
    ring: int
    room: float
    fill: list[_Local] = field(default_factory=list)


def plan_balanced(draft: Draft, placements: list[Placement], cost: CostModel, balance: Balance = "dp") -> None:
    """Fill ``draft`` with a time-balanced assignment (see the module docstring)."""
    n, cap = draft.num_ranks, draft.capacity
    stages = cost.pp if balance == "pp" else 1
    lengths = draft.lengths
    load = [0.0] * n  # S_r / P
    peak = [0.0] * n  # M_r
    bubble = (stages - 1) / stages
    heap = [(0.0, r) for r in range(n)]

    def push(r: int) -> None:
        heapq.heappush(heap, (load[r] + bubble * peak[r], r))

    ring_seqs = sorted(
        (i for i, p in enumerate(placements) if p.ranks > 1),
        key=lambda i: (-_ring_time(cost, lengths[i], placements[i].ranks), i),
    )
    ring_work = sum(placements[i].ranks * _ring_time(cost, lengths[i], placements[i].ranks) for i in ring_seqs)
    local_work = sum(cost.seq_time(n) for n, p in zip(lengths, placements) if p.ranks == 1)
    committed = 0.0
    slots: list[_Slot] = []
    ring_mb: dict[tuple[int, int], DraftMicroBatch] = {}
    for seq in ring_seqs:
        pl = placements[seq]
        t = _ring_time(cost, lengths[seq], pl.ranks)
        ring_work -= pl.ranks * t
        members = _choose_members(heap, pl.ranks, t / stages, (committed + ring_work + local_work) / n, n)
        start = max(load[r] for r in members)
        g = draft.new_ring(seq, members)
        for r in members:
            if start - load[r] > 0:
                slots.append(_Slot(r, g, start - load[r]))
            mb = DraftMicroBatch(rings=[g], offload_ratio=pl.offload_ratio, token_limit=pl.token_limit)
            draft.ranks[r].append(mb)
            ring_mb[(r, g)] = mb
            committed += start + t / stages - load[r]
            load[r] = start + t / stages
            peak[r] = max(peak[r], t)
            push(r)

    locals_ = _local_units(draft, placements, cost, pack=balance == "pp")
    if balance == "dp":
        locals_ = _fill_slots(slots, locals_)
    tails: list[list[_Local]] = [[] for _ in range(n)]
    for unit in locals_:  # already largest first
        _, r = heapq.heappop(heap)
        tails[r].append(unit)
        load[r] += unit.time / stages
        peak[r] = max(peak[r], unit.time)
        push(r)

    _lay_out(draft, slots, tails, ring_mb, pack=balance == "dp")


def _choose_members(heap: list[tuple[float, int]], k: int, t: float, base: float, n: int) -> list[int]:
    """Pop the k ranks for a ring: a window of consecutive ranks in load order.

    The k least-loaded ranks start the ring soonest but may leave idle gaps before it on the
    earlier ones; a window further up starts later with smaller gaps. Pick the window that
    minimises the estimated final makespan, max(start + t, (committed + idle) / N + remaining
    share); ``base`` is (committed + remaining) / N before this ring. Windows start where the load
    changes, among the 4k lightest ranks.
    """
    take = min(len(heap), 4 * k)
    cand = [heapq.heappop(heap) for _ in range(take)]  # ascending
    best_j, best_key = 0, None
    prefix = [0.0]
    for f, _ in cand:
        prefix.append(prefix[-1] + f)
    for j in range(0, take - k + 1):
        if j and cand[j][0] == cand[j - 1][0]:
            continue
        start = cand[j + k - 1][0]
        idle = k * start - (prefix[j + k] - prefix[j])
        key = (max(start + t, base + (k * t + idle) / n), idle, j)
        if best_key is None or key < best_key:
            best_j, best_key = j, key
    for item in cand[:best_j] + cand[best_j + k:]:
        heapq.heappush(heap, item)
    return sorted(r for _, r in cand[best_j:best_j + k])


def _ring_time(cost: CostModel, length: int, k: int) -> float:
    return cost.seq_time(length, k) + cost.micro_batch_overhead(k)


def _local_units(draft: Draft, placements: list[Placement], cost: CostModel, pack: bool) -> list[_Local]:
    """Whole sequences as schedulable units, largest time first."""
    units = []
    shorts = []
    for i, (n, p) in enumerate(zip(draft.lengths, placements)):
        if p.ranks > 1:
            continue
        if n > draft.capacity:  # held whole thanks to offloading: a micro-batch of its own
            units.append(_Local(cost.seq_time(n) + cost.micro_batch_overhead(), [i], n, p.offload_ratio, p.token_limit))
        else:
            shorts.append(i)
    if pack:
        for mb in pack_best_fit(shorts, draft.lengths, draft.capacity):
            t = sum(cost.seq_time(draft.lengths[i]) for i in mb) + cost.micro_batch_overhead()
            units.append(_Local(t, mb, sum(draft.lengths[i] for i in mb)))
    else:
        units.extend(_Local(cost.seq_time(draft.lengths[i]), [i], draft.lengths[i]) for i in shorts)
    units.sort(key=lambda u: (-u.time, u.seqs[0]))
    return units


def _fill_slots(slots: list[_Slot], units: list[_Local]) -> list[_Local]:
    """Put units into ring gaps where they fit (free time); return the rest, largest first."""
    if not slots or not units:
        return units
    ordered = sorted(range(len(units)), key=lambda i: (units[i].time, i))  # ascending time
    times = [units[i].time for i in ordered]
    for slot in sorted(slots, key=lambda s: -s.room):
        while times:
            j = bisect.bisect_right(times, slot.room) - 1
            if j < 0:
                break
            slot.fill.append(units[ordered[j]])
            slot.room -= times[j]
            del times[j], ordered[j]
    keep = sorted(ordered, key=lambda i: (-units[i].time, units[i].seqs[0]))
    return [units[i] for i in keep]


def _lay_out(draft: Draft, slots: list[_Slot], tails: list[list[_Local]],
             ring_mb: dict[tuple[int, int], DraftMicroBatch], pack: bool) -> None:
    """Turn gap fills and tails into micro-batches in each rank's list."""
    before: dict[tuple[int, int], list[_Local]] = {}
    for s in slots:
        if s.fill:
            before[(s.rank, s.ring)] = s.fill
    for r in range(draft.num_ranks):
        rings = draft.ranks[r]
        out: list[DraftMicroBatch] = []
        for mb in rings:
            out.extend(_micro_batches(draft, before.get((r, mb.rings[0]), []), pack))
            out.append(mb)
        tail = tails[r]
        if pack and rings and rings[-1].offload_ratio == 0.0:
            last = rings[-1]
            g = last.rings[0]
            spare = draft.capacity - max_member_tokens(draft.lengths[draft.ring_seq[g]], len(draft.ring_ranks[g]))
            tail = sorted(tail, key=lambda u: (-u.tokens, u.seqs[0]))
            rest = []
            for u in tail:
                if u.offload_ratio == 0.0 and u.tokens <= spare:
                    last.whole.extend(u.seqs)
                    spare -= u.tokens
                else:
                    rest.append(u)
            tail = rest
        out.extend(_micro_batches(draft, tail, pack))
        draft.ranks[r] = out


def _micro_batches(draft: Draft, units: list[_Local], pack: bool) -> list[DraftMicroBatch]:
    out = [draft.seq_micro_batch(u.seqs, u.offload_ratio, u.token_limit) for u in units if u.offload_ratio or not pack]
    if pack:
        shorts = [s for u in units if not u.offload_ratio for s in u.seqs]
        out.extend(draft.seq_micro_batch(mb) for mb in pack_best_fit(shorts, draft.lengths, draft.capacity))
    return out


def pack_best_fit(seqs: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing of whole sequences into micro-batches of <= capacity tokens."""
    order = sorted(seqs, key=lambda i: (-lengths[i], i))
    rooms: list[tuple[int, int]] = []  # (room left, bin index), sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(rooms, (n, -1))
        if j < len(rooms):
            room, b = rooms.pop(j)
            bins[b].append(i)
            bisect.insort(rooms, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(rooms, (capacity - n, len(bins) - 1))
    return bins


def plan_naive(draft: Draft, placements: list[Placement]) -> None:
    """What a data loader does without a scheduler: sequences in the order given, next-fit packed,
    micro-batches and rings dealt to ranks round-robin."""
    n = draft.num_ranks
    cursor = 0
    current: list[int] = []
    used = 0

    def flush() -> None:
        nonlocal cursor, current, used
        if current:
            draft.ranks[cursor % n].append(draft.seq_micro_batch(current))
            cursor += 1
            current, used = [], 0

    for i, length in enumerate(draft.lengths):
        p = placements[i]
        if p.ranks == 1 and length <= draft.capacity:
            if used + length > draft.capacity:
                flush()
            current.append(i)
            used += length
            continue
        if p.ranks == 1:
            draft.ranks[cursor % n].append(draft.seq_micro_batch([i], p.offload_ratio, p.token_limit))
        else:
            members = sorted({(cursor + j) % n for j in range(p.ranks)})
            g = draft.new_ring(i, members)
            for r in members:
                draft.ranks[r].append(DraftMicroBatch(rings=[g], offload_ratio=p.offload_ratio, token_limit=p.token_limit))
        cursor += p.ranks
    flush()
