"""The HDP balance scheduler: fewest ranks per sequence, then balance estimated time, not tokens.

``dp`` mode (plain HDP ranks) minimises the makespan with list scheduling and backfilling
(``backfill.py``): rings are rigid jobs of k ranks, whole sequences jobs of one rank, and ranks
run different numbers of micro-batches.

``pp`` mode (every HDP rank a 1F1B pipeline of P stages) minimises, over pipelines r,

    F_r = S_r / P + (P - 1) / P * M_r

where S_r is the sum of r's micro-batch times and M_r the largest: each micro-batch runs t/P on
every stage and the pipeline idles (P - 1) * M_r / P in its bubble. Whole sequences are first packed
into C-token micro-batches, so micro-batches are alike; then rings and micro-batches, largest first,
go to the pipelines of smallest F. Taking units largest first means each pipeline's first unit sets
its M_r and later ones come from the next length buckets in turn, which keeps bubbles small.

Ring ids follow the order rings are placed, so they increase along every rank's list (rule 5).
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass
from typing import Literal

from hdp.plan.schedule.draft import Draft, DraftMicroBatch
from hdp.plan.schedule.backfill import Job, schedule
from hdp.plan.schedule.sharding import Placement
from hdp.plan.zigzag import max_member_tokens
from hdp.plan.schedule.balance_measure import Weights

Balance = Literal["dp", "pp"]


@dataclass(slots=True)
class _Local:
    """Work that runs on one rank without communication: whole sequences, one micro-batch or more."""

    time: float
    seqs: list[int]
    tokens: int
    offload_layers: int = 0
    token_limit: int = 0


def plan_balanced(draft: Draft, placements: list[Placement], weights: Weights, balance: Balance = "dp",
                  stages: int = 1, free=None, stretch=None) -> None:
    """Fill ``draft`` with a balanced assignment (see the module docstring); ``free`` (a
    ``FreeRanks`` with a topology) and ``stretch`` make the ``dp`` scheduler node-aware (``backfill.schedule``)."""
    if balance == "dp":
        per_rank, started = schedule(draft.lengths, placements, weights, draft.num_ranks, free, stretch)
        _lay_out_jobs(draft, placements, per_rank, started)
        return
    n, lengths = draft.num_ranks, draft.lengths
    load = [0.0] * n  # S_r / P, including waits at rings
    peak = [0.0] * n  # M_r
    bubble = (stages - 1) / stages
    heap = [(0.0, r) for r in range(n)]

    def push(r: int) -> None:
        heapq.heappush(heap, (load[r] + bubble * peak[r], r))

    for seq in sorted((i for i, p in enumerate(placements) if p.ranks > 1),
                      key=lambda i: (-weights.ring(lengths[i], placements[i].ranks), i)):
        pl = placements[seq]
        t = weights.ring(lengths[seq], pl.ranks)
        members = sorted(heapq.heappop(heap)[1] for _ in range(pl.ranks))
        start = max(load[r] for r in members)
        g = draft.new_ring(seq, members)
        for r in members:
            draft.ranks[r].append(draft.ring_micro_batch([g], pl.offload_layers, pl.token_limit))
            load[r] = start + t / stages
            peak[r] = max(peak[r], t)
            push(r)
    for unit in _packed_units(draft, placements, weights):
        _, r = heapq.heappop(heap)
        draft.ranks[r].append(draft.seq_micro_batch(unit.seqs, unit.offload_layers, unit.token_limit))
        load[r] += unit.time / stages
        peak[r] = max(peak[r], unit.time)
        push(r)


def _lay_out_jobs(draft: Draft, placements: list[Placement], per_rank: list[list[Job]], started: list[Job]) -> None:
    """Time-ordered jobs -> micro-batches: runs of whole sequences between rings are packed
    best-fit into C-token micro-batches; trailing ones first fill the last ring's spare capacity."""
    ring_id = {job.seq: draft.new_ring(job.seq, list(job.members)) for job in started}
    lengths, cap = draft.lengths, draft.capacity
    for r, jobs in enumerate(per_rank):
        out: list[DraftMicroBatch] = []
        run: list[int] = []  # short whole sequences since the last ring or offloaded sequence
        for job in jobs:
            if job.ranks == 1 and lengths[job.seq] <= cap:
                run.append(job.seq)
                continue
            out.extend(draft.seq_micro_batch(mb) for mb in pack_best_fit(run, lengths, cap))
            run = []
            p = placements[job.seq]
            if job.ranks > 1:
                out.append(draft.ring_micro_batch([ring_id[job.seq]], p.offload_layers, p.token_limit))
            else:
                out.append(draft.seq_micro_batch([job.seq], p.offload_layers, p.token_limit))
        if run and out and out[-1].rings and out[-1].offload_layers == 0:
            run = _fill_spare(draft, out[-1], run)
        out.extend(draft.seq_micro_batch(mb) for mb in pack_best_fit(run, lengths, cap))
        draft.ranks[r] = out


def _fill_spare(draft: Draft, ring_mb: DraftMicroBatch, seqs: list[int]) -> list[int]:
    """Put the longest of ``seqs`` that fit into a ring micro-batch's spare capacity; return the rest.

    Only the rank's last ring may take them: nothing after it waits on this rank's time."""
    lengths = draft.lengths
    g = ring_mb.rings[0]
    spare = draft.capacity - max_member_tokens(lengths[draft.ring_seq[g]], len(draft.ring_ranks[g]))
    rest = []
    for seq in sorted(seqs, key=lambda i: (-lengths[i], i)):
        if lengths[seq] <= spare:
            ring_mb.whole.append(seq)
            spare -= lengths[seq]
        else:
            rest.append(seq)
    return rest


def _packed_units(draft: Draft, placements: list[Placement], weights: Weights) -> list[_Local]:
    """Whole sequences as micro-batches (short ones packed best-fit to C tokens), largest first."""
    units, shorts = [], []
    for i, (n, p) in enumerate(zip(draft.lengths, placements)):
        if p.ranks > 1:
            continue
        if n > draft.capacity:  # held whole thanks to offloading: a micro-batch of its own
            units.append(_Local(weights.whole(n) + weights.overhead(), [i], n, p.offload_layers, p.token_limit))
        else:
            shorts.append(i)
    for mb in pack_best_fit(shorts, draft.lengths, draft.capacity):
        t = sum(weights.whole(draft.lengths[i]) for i in mb) + weights.overhead()
        units.append(_Local(t, mb, sum(draft.lengths[i] for i in mb)))
    units.sort(key=lambda u: (-u.time, u.seqs[0]))
    return units


def pack_best_fit(seqs: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing of whole sequences into micro-batches of <= capacity tokens."""
    if len(seqs) <= 1:  # most runs between two rings (the scheduler asks 50,000 times at 16K ranks)
        return [list(seqs)] if seqs else []
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
            draft.ranks[cursor % n].append(draft.seq_micro_batch([i], p.offload_layers, p.token_limit))
        else:
            members = sorted({(cursor + j) % n for j in range(p.ranks)})
            g = draft.new_ring(i, members)
            for r in members:
                draft.ranks[r].append(draft.ring_micro_batch([g], p.offload_layers, p.token_limit))
        cursor += p.ranks
    flush()
