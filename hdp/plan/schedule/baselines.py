"""Baselines as planners, emitting the same Plan so the runtime and simulator compare fairly.

* ``static``: a fixed DP x CP mesh, as Megatron-LM / MegaScale jobs run. CP is fixed before the job
  sees data: the smallest divisor of the rank count whose group holds ``max_len``. Sequences are
  packed into CP-group micro-batches of CP*C tokens and every sequence in them is split over the
  whole group; micro-batches are dealt to DP groups balancing tokens (what packing equalises).
* ``pow2``: dynamic CP restricted to pre-built, aligned power-of-two groups (Megatron-LM's dynamic
  context parallel): a sequence gets the smallest power-of-two group that holds it; work is balanced
  by time, but rings cannot take arbitrary rank sets and short sequences never share a ring's spare
  capacity.
"""

from __future__ import annotations

import heapq

from hdp.plan.schedule.balance import pack_best_fit
from hdp.plan.cost.cost_model import CostModel
from hdp.plan.schedule.draft import Draft
from hdp.plan.schedule.sharding import PlanError
from hdp.plan.zigzag import max_member_tokens, member_shares, ranks_needed


def static_cp_size(num_ranks: int, capacity: int, max_len: int, lengths: list[int] = ()) -> int:
    """The smallest divisor of the rank count whose group holds max_len (and, with zig-zag
    rounding, every member's share of every sequence in the batch)."""
    need = ranks_needed(max_len, capacity)
    for cp in range(need, num_ranks + 1):
        if num_ranks % cp == 0 and (cp == 1 or all(max_member_tokens(n, cp) <= capacity for n in lengths)):
            return cp
    raise PlanError(
        f"a static mesh needs context parallelism >= {need:,} to hold {max_len:,} tokens at capacity "
        f"{capacity:,}, but no divisor of {num_ranks:,} ranks is that large: raise {{num_ranks}} or {{capacity}}"
    )


class _PackedShares:
    """A CP group's per-member tokens as one integer, ``w`` bits a member: adding a sequence to a
    micro-batch is one big-integer addition, and whether any member would exceed C one mask test,
    instead of a Python step per member (512 members per sequence at 4,096 ranks).

    A member holding u tokens, given s more, has field ``u + s + 2**(w-1) - 1 - C``: its top bit is set
    exactly when u + s > C, and it never carries into the next field (u and s are at most ``most``,
    2**(w-1) >= 2 * most). A length L = q*2k + r gives every member 2q tokens plus its share of r
    (piece boundaries floor(jL/2k) = jq + floor(jr/2k)), so shares are packed once per remainder."""

    def __init__(self, cp: int, capacity: int, most: int) -> None:
        self.cp, self.bytes = cp, 1
        while 8 * self.bytes - 1 < (2 * most).bit_length():
            self.bytes *= 2
        w = 8 * self.bytes
        self.ones = self.pack([1] * cp)
        self.high = self.ones << (w - 1)
        self.offset = self.ones * ((1 << (w - 1)) - 1 - capacity)
        self._rest: dict[int, int] = {}

    def pack(self, values: list[int]) -> int:
        return int.from_bytes(b"".join(v.to_bytes(self.bytes, "little") for v in values), "little")

    def share(self, length: int) -> int:
        q, r = divmod(length, 2 * self.cp)
        packed = self._rest.get(r)
        if packed is None:
            packed = self._rest[r] = self.pack(member_shares(r, self.cp)) if r else 0
        return packed + 2 * q * self.ones

    def fits(self, used: int, share: int) -> bool:
        return not (used + share + self.offset) & self.high


def plan_static(draft: Draft, max_len: int) -> int:
    """Fill ``draft`` with a static DP x CP plan; returns the CP size."""
    n, cap, lengths = draft.num_ranks, draft.capacity, draft.lengths
    cp = static_cp_size(n, cap, max_len, sorted(set(lengths)))
    dp = n // cp
    # First-fit decreasing into micro-batches; one fits when every member's share stays within C.
    packed = _PackedShares(cp, cap, max(cap, max_member_tokens(max(lengths), cp) if cp > 1 else max(lengths)))
    bins: list[list[int]] = []  # the sequences of each micro-batch
    used: list[int] = []  # each bin's per-member tokens, packed
    totals: list[int] = []  # tokens of each bin (the sum of its per-member tokens)
    # Bins only fill up, so a bin that refused a length refuses it for good: the next sequence of
    # the same length starts where the last one went (same first fit, a scan less per duplicate).
    went: dict[int, int] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        total = lengths[i]  # members' shares add up to the sequence
        share = packed.share(total)
        for b in range(went.get(total, 0), len(bins)):
            if totals[b] + total <= cp * cap and packed.fits(used[b], share):
                bins[b].append(i)
                used[b] += share
                totals[b] += total
                break
        else:
            b = len(bins)
            bins.append([i])
            used.append(share)
            totals.append(total)
        went[total] = b
    heap = [(0, g) for g in range(dp)]
    groups: list[list[list[int]]] = [[] for _ in range(dp)]
    for b in sorted(range(len(bins)), key=lambda b: (-totals[b], bins[b][0])):
        tokens, g = heapq.heappop(heap)
        groups[g].append(bins[b])
        heapq.heappush(heap, (tokens + totals[b], g))
    for g, mbs in enumerate(groups):
        members = list(range(g * cp, (g + 1) * cp))
        for seqs in mbs:
            if cp == 1:
                draft.ranks[members[0]].append(draft.seq_micro_batch(seqs))
                continue
            rings = [draft.new_ring(s, members) for s in sorted(seqs)]
            for r in members:
                draft.ranks[r].append(draft.ring_micro_batch(rings))
    return cp


def pow2_size(length: int, capacity: int, num_ranks: int) -> int:
    """The smallest power-of-two group whose members' zig-zag shares fit C; 0 when none up to
    ``num_ranks`` does."""
    k = 1
    while k <= num_ranks:
        if k * capacity >= length and (k == 1 or max_member_tokens(length, k) <= capacity):
            return k
        k *= 2
    return 0


def pow2_sizes(lengths: list[int], capacity: int, num_ranks: int) -> list[int]:
    """``pow2_size`` of every sequence; a sequence no group holds is a ``PlanError``."""
    sizes = [pow2_size(length, capacity, num_ranks) for length in lengths]
    for i, k in enumerate(sizes):
        if k == 0:
            raise PlanError(
                f"sequence {i} has {lengths[i]:,} tokens; pow2 needs an aligned power-of-two group "
                f"larger than {num_ranks:,} ranks to hold it: raise {{num_ranks}} or {{capacity}}"
            )
    return sizes


def plan_pow2(draft: Draft, cost: CostModel) -> None:
    """Fill ``draft`` with power-of-two rings on aligned groups, balanced by time (LPT)."""
    n, cap, lengths = draft.num_ranks, draft.capacity, draft.lengths
    sizes = pow2_sizes(lengths, cap, n)
    load = [0.0] * n
    rings = sorted((i for i, k in enumerate(sizes) if k > 1),
                   key=lambda i: (-cost.seq_time(lengths[i], sizes[i]), i))
    for i in rings:
        k = sizes[i]
        t = cost.seq_time(lengths[i], k) + cost.micro_batch_overhead(k)
        best = min(range(n // k), key=lambda b: (max(load[b * k:(b + 1) * k]), b))
        members = list(range(best * k, (best + 1) * k))
        start = max(load[r] for r in members)
        g = draft.new_ring(i, members)
        for r in members:
            draft.ranks[r].append(draft.ring_micro_batch([g]))
            load[r] = start + t
    heap = [(load[r], r) for r in range(n)]
    heapq.heapify(heap)
    tails: list[list[int]] = [[] for _ in range(n)]
    for i in sorted((i for i, k in enumerate(sizes) if k == 1), key=lambda i: (-lengths[i], i)):
        t, r = heapq.heappop(heap)
        tails[r].append(i)
        heapq.heappush(heap, (t + cost.seq_time(lengths[i]), r))
    for r in range(n):
        draft.ranks[r].extend(draft.seq_micro_batch(mb) for mb in pack_best_fit(tails[r], lengths, cap))
