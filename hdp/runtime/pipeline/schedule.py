"""The pipeline schedule of one step, from the plan alone (pure Python: every process computes it alike).

Two parts (docs/pipeline.md has the deadlock-freedom argument):

* ``slots``: each HDP rank's micro-batches (one pipeline's) get *slot* indices. A ring micro-batch
  runs in the same slot on every pipeline that shares it, so the k pipelines reach its ring
  attention together at every stage; where members' list positions differ, the earlier ones wait
  through empty slots (no-ops: no compute, no transfer). Slots are the least solution of "one more
  than the previous micro-batch of the list, equal across a ring's members" (a fixpoint).
* ``stage_order``: the events (F or B, slot) one stage runs, in 1F1B order: the order of the
  schedule-independent potential ``tau`` restricted to the pipeline's non-empty slots. Without gaps
  that is warm-up ``min(P - s - 1, M)`` forwards, steady one-forward-one-backward, cool-down
  backwards; the order never depends on the micro-batch count, so pipelines of different lengths agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

Kind = Literal["F", "B"]


@dataclass(frozen=True, slots=True)
class Event:
    """One stage's forward or backward of the micro-batch in ``slot`` (``index``: its place in the rank's list)."""

    kind: Kind
    slot: int
    index: int


def slots(ring_lists: Sequence[Sequence[Sequence[int]]]) -> list[list[int]]:
    """Slot of every micro-batch: ``ring_lists[r][i]`` = the ring ids of rank r's micro-batch i.

    Least assignment with slot(r, i) >= slot(r, i - 1) + 1 and all micro-batches that share a ring in
    one slot. Raises ``ValueError`` when no assignment exists (rings ordered differently on two ranks:
    the plan's rule 5 forbids it)."""
    where: dict[int, list[tuple[int, int]]] = {}
    for r, mbs in enumerate(ring_lists):
        for i, rings in enumerate(mbs):
            for g in rings:
                where.setdefault(g, []).append((r, i))
    out = [list(range(len(mbs))) for mbs in ring_lists]
    bound = sum(len(mbs) for mbs in ring_lists) + 1  # a fixpoint moves no slot past this
    changed = True
    while changed:
        changed = False
        for g in sorted(where):
            top = max(out[r][i] for r, i in where[g])
            for r, i in where[g]:
                if out[r][i] < top:
                    out[r][i], changed = top, True
        for row in out:
            for i in range(1, len(row)):
                if row[i] <= row[i - 1]:
                    row[i], changed = row[i - 1] + 1, True
        if any(row and row[-1] > bound for row in out):
            raise ValueError("the plan's rings are ordered differently on two ranks: no pipeline slot order exists")
    return out


def tau(kind: Kind, stage: int, slot: int, stages: int) -> int:
    """The event's place in the one total order every stage's 1F1B follows (docs/pipeline.md):
    F(s, i) = 2i + s, B(s, j) = 2j + 2P - s - 1. On one stage F(i) comes before B(j) iff i <= j + P - s - 1."""
    return 2 * slot + stage if kind == "F" else 2 * slot + 2 * stages - stage - 1


def stage_order(rank_slots: Sequence[int], stage: int, stages: int) -> list[Event]:
    """The events stage ``stage`` of one pipeline runs, in order (``rank_slots``: its micro-batches' slots)."""
    events = [Event(k, s, i) for i, s in enumerate(rank_slots) for k in ("F", "B")]
    return sorted(events, key=lambda e: tau(e.kind, stage, e.slot, stages))


def bubble_fraction(times: Sequence[Sequence[float]], stages: int) -> float:
    """The planner's idle fraction of a step's stages (``plan.estimate``, balance ``F_r``): each stage of
    pipeline r computes S_r = the sum of its micro-batch times (each t on every stage) and idles
    (P - 1) M_r, M_r the largest; summed over pipelines, sum (P - 1) M_r / sum (S_r + (P - 1) M_r)."""
    idle = sum((stages - 1) * max(t) for t in times if t)
    total = idle + sum(sum(t) for t in times)
    return idle / total if total > 0 else 0.0
