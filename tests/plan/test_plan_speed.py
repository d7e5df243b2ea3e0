"""The planner's faster data structures against the plain definitions they replace (issue 21 item 4):
``FreeRanks.pick`` is ``pick_members`` on the sorted free list, the packed static first-fit is the
member-by-member one, and ring pieces are rule 2's cuts; on random histories and batches."""

from __future__ import annotations

import heapq
import random

import pytest

from hdp.plan.cost.topology import Topology, pick_members
from hdp.plan.schedule.baselines import plan_static, static_cp_size
from hdp.plan.schedule.draft import Draft
from hdp.plan.schedule.free_ranks import FreeRanks
from hdp.plan.types import Segment
from hdp.plan.zigzag import member_shares, ring_segments


@pytest.mark.parametrize("rpn,algo,num_ranks", [(8, "two-level", 64), (8, "flat", 48), (4, "two-level", 30),
                                                (6, "bidirectional", 36), (1, "two-level", 16), (0, "", 20)])
def test_free_ranks_pick_what_pick_members_picks(rpn, algo, num_ranks):
    rng = random.Random(rpn * 1000 + num_ranks)
    topo = Topology(rpn, algo) if rpn else None
    free = FreeRanks(num_ranks, topo)
    plain = set(range(num_ranks))
    for _ in range(3000):
        if plain and rng.random() < 0.55:
            k = rng.choice([1, 2, 3, 4, 5, 6, 8, 9, 12, 16, 18, 24, len(plain)])
            want = (pick_members(sorted(plain), k, topo) if topo else sorted(plain)[:k])
            assert free.pick(k) == want
            plain -= set(want)
        else:
            busy = sorted(set(range(num_ranks)) - plain)
            for r in rng.sample(busy, min(len(busy), rng.randint(1, 9))):
                free.add(r)
                plain.add(r)
        assert len(free) == len(plain) and free.ranks() == sorted(plain)
        assert all((r in free) == (r in plain) for r in range(num_ranks))


def _static_bins_plain(lengths: list[int], cp: int, cap: int) -> list[list[int]]:
    """plan_static's first-fit, member by member (the definition the packed shares replace)."""
    bins: list[tuple[list[int], list[int]]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        share = member_shares(lengths[i], cp) if cp > 1 else [lengths[i]]
        for seqs, used in bins:
            if sum(used) + sum(share) <= cp * cap and all(u + s <= cap for u, s in zip(used, share)):
                seqs.append(i)
                used[:] = [u + s for u, s in zip(used, share)]
                break
        else:
            bins.append(([i], list(share)))
    return [seqs for seqs, _ in bins]


@pytest.mark.parametrize("seed", range(12))
def test_static_packing_is_member_by_member_first_fit(seed):
    rng = random.Random(seed)
    cap = rng.choice([1, 2, 3, 7, 64, 255, 256, 1000])
    num_ranks = rng.choice([1, 2, 4, 6, 8, 12, 16])
    lengths = [rng.randint(1, cap * rng.choice([1, 1, 2, num_ranks])) for _ in range(rng.randint(1, 60))]
    lengths = [n for n in lengths if n <= cap * num_ranks // 2] or [1]
    try:
        cp = static_cp_size(num_ranks, cap, max(lengths), sorted(set(lengths)))
    except ValueError:
        pytest.skip("no divisor holds the batch")
    draft = Draft(lengths, num_ranks, cap)
    assert plan_static(draft, max(lengths)) == cp
    want = sorted(_static_bins_plain(lengths, cp, cap))
    got = sorted({tuple(draft.ring_seq[g] for g in mb.rings) if mb.rings else tuple(mb.whole)
                  for mbs in draft.ranks for mb in mbs})
    assert sorted(sorted(b) for b in want) == sorted(sorted(b) for b in got)


def test_ring_segments_are_rule_2_cuts():
    for length in list(range(1, 70)) + [random.Random(1).randint(1, 10**9) for _ in range(40)]:
        for k in (1, 2, 3, 5, 8, 31, 64):
            n = 2 * k
            cuts = [j * length // n for j in range(n + 1)]
            want = [tuple(Segment(5, a, b) for a, b in ((cuts[i], cuts[i + 1]), (cuts[n - 1 - i], cuts[n - i])) if b > a)
                    for i in range(k)]
            assert ring_segments(5, length, k) == want
            assert member_shares(length, k) == [sum(s.num_tokens for s in m) for m in want]


def test_heap_order_is_lowest_first():
    """Without a topology the scheduler took the lowest free ranks off a heap: ``pick`` does."""
    free = FreeRanks(10)
    heap = list(range(10))
    for k in (3, 2):
        assert free.pick(k) == [heapq.heappop(heap) for _ in range(k)]
