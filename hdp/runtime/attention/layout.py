"""Where every token of one micro-batch lives on one rank: the input of HDP attention.

The packed token buffer of a micro-batch is its segments concatenated in plan order. Attention
needs, per buffer row, the sequence and the *global* position (RoPE, causal masks across ring
pieces), and, per kind of work, the rows it owns: whole sequences run document-masked causal
attention locally; ring pieces run ring attention with the ring's other members.

Everything here is a pure function of ``(plan, rank, mb_index)``, so every rank's view is
testable in one process; the device-side metadata built from it once per micro-batch is
``attention.MicroBatchAttention``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hdp.plan.zigzag import member_pieces
from hdp.plan.types import Plan, Segment


@dataclass(frozen=True, slots=True)
class Span:
    """Buffer rows ``[start, end)`` hold positions ``[pos_start, pos_start + end - start)`` of ``seq``.

    ``start == end`` is allowed for ring pieces with no tokens (they still have a place in the
    zig-zag order, so a member's two pieces are always addressable as a pair).
    """

    seq: int
    start: int
    end: int
    pos_start: int

    def __post_init__(self) -> None:
        if not (0 <= self.start <= self.end and self.pos_start >= 0):
            raise ValueError(f"bad span of sequence {self.seq}: rows [{self.start}, {self.end}) at {self.pos_start}")

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class RingSlot:
    """This rank's part in one ring: its peers (global ranks) and the rows of its two zig-zag pieces.

    ``pieces[0]`` is piece ``position`` and ``pieces[1]`` piece ``2k-1-position``; either may be
    empty. Peers' pieces are not stored: every member derives them from ``seq_len`` and the ring
    size (``member_ranges``), which is what lets a member size its receive buffers without asking.
    """

    ring_id: int
    seq: int
    seq_len: int
    ranks: tuple[int, ...]
    position: int
    pieces: tuple[Span, Span]
    algo: str = "flat"
    """The plan's ring algorithm (``Ring.algo``); ring_select.py says which one actually runs."""
    gpus_per_node: int = 0
    """The plan's ranks per node (0: unknown), for the two-level ring's node grid."""

    def __post_init__(self) -> None:
        if len(self.ranks) < 2 or not 0 <= self.position < len(self.ranks):
            raise ValueError(f"ring {self.ring_id}: position {self.position} of {list(self.ranks)}")

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def rank(self) -> int:
        return self.ranks[self.position]

    @property
    def next_rank(self) -> int:
        """Global rank K/V blocks are sent to (the next member around the ring)."""
        return self.ranks[(self.position + 1) % self.size]

    @property
    def prev_rank(self) -> int:
        """Global rank K/V blocks arrive from."""
        return self.ranks[(self.position - 1) % self.size]

    @property
    def num_tokens(self) -> int:
        return self.pieces[0].num_tokens + self.pieces[1].num_tokens

    def member_ranges(self, member: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Global token ranges of member ``member``'s two pieces (zig-zag, PLAN_FORMAT rule 2)."""
        return member_pieces(self.seq_len, self.size, member)

    def member_tokens(self, member: int) -> int:
        return sum(b - a for a, b in self.member_ranges(member))


@dataclass(frozen=True, slots=True)
class AttentionLayout:
    """One micro-batch on one rank, as attention sees it.

    ``spans`` are all segments in buffer order; ``docs`` the whole sequences (document-masked causal
    attention, no communication); ``rings`` the ring slots in ring-id order, the order every member
    runs them in (PLAN_FORMAT rule 5: one global order, so the wait-for graph has no cycle).
    """

    rank: int
    mb_index: int
    num_tokens: int
    spans: tuple[Span, ...]
    docs: tuple[Span, ...]
    rings: tuple[RingSlot, ...]

    @property
    def doc_cu_seqlens(self) -> tuple[int, ...]:
        """Cumulative lengths of ``docs`` packed back to back (flash-attn varlen convention)."""
        out = [0]
        for d in self.docs:
            out.append(out[-1] + d.num_tokens)
        return tuple(out)


def build_layout(plan: Plan, rank: int, mb_index: int) -> AttentionLayout:
    """The attention layout of micro-batch ``mb_index`` of ``rank`` in ``plan``.

    Checks what attention relies on and a hand-made plan could get wrong: a sequence not in one of
    the micro-batch's rings must be whole; a ring member's segments must be exactly its zig-zag pieces.
    """
    if not 0 <= rank < plan.num_ranks:
        raise ValueError(f"rank {rank} is not in the plan (num_ranks={plan.num_ranks})")
    mbs = plan.ranks[rank].micro_batches
    if not 0 <= mb_index < len(mbs):
        raise ValueError(f"rank {rank} has {len(mbs)} micro-batches; there is no micro-batch {mb_index}")
    mb = mbs[mb_index]
    spans: list[Span] = []
    row = 0
    for s in mb.segments:
        spans.append(Span(s.seq, row, row + s.num_tokens, s.start))
        row += s.num_tokens

    ring_of_seq = {}
    for g in sorted(mb.rings):
        ring = plan.rings[g]
        if rank not in ring.ranks:
            raise ValueError(
                f"micro-batch {mb_index} of rank {rank} lists ring {g}, whose members are {list(ring.ranks)}"
            )
        if ring.seq in ring_of_seq:
            raise ValueError(f"sequence {ring.seq} is in two rings of micro-batch {mb_index} of rank {rank}")
        ring_of_seq[ring.seq] = ring

    docs: list[Span] = []
    by_seq: dict[int, list[tuple[Segment, Span]]] = {}
    for seg, span in zip(mb.segments, spans):
        if seg.seq in ring_of_seq:
            by_seq.setdefault(seg.seq, []).append((seg, span))
            continue
        length = plan.sequences[seg.seq].length
        if (seg.start, seg.end) != (0, length):
            raise ValueError(
                f"rank {rank} micro-batch {mb_index}: sequence {seg.seq} segment [{seg.start}, {seg.end}) is part "
                f"of a sequence of length {length} but the micro-batch lists no ring for it"
            )
        docs.append(span)

    rings = [_ring_slot(plan, ring, rank, mb_index, by_seq.get(ring.seq, []), row) for ring in ring_of_seq.values()]
    rings.sort(key=lambda r: r.ring_id)
    return AttentionLayout(rank, mb_index, row, tuple(spans), tuple(docs), tuple(rings))


def _ring_slot(plan: Plan, ring, rank: int, mb_index: int, held: list[tuple[Segment, Span]], end_row: int) -> RingSlot:
    k, pos = ring.size, ring.ranks.index(rank)
    length = plan.sequences[ring.seq].length
    want = list(member_pieces(length, k, pos))
    nonempty = [w for w in want if w[1] > w[0]]
    got = [(seg.start, seg.end) for seg, _ in held]
    if sorted(got) != sorted(nonempty):
        raise ValueError(
            f"rank {rank} micro-batch {mb_index}: ring {ring.id} member {pos} of {k} must hold pieces "
            f"{nonempty} of sequence {ring.seq} (length {length}), the plan gives {got}"
        )
    spans = {(seg.start, seg.end): span for seg, span in held}
    # An empty piece gets a zero-row span next to its partner (or at the buffer end if both are
    # empty), so code that slices by span rows never needs a special case.
    anchor = held[0][1].start if held else end_row
    pieces = tuple(spans.get(w, Span(ring.seq, anchor, anchor, w[0])) for w in want)
    return RingSlot(ring.id, ring.seq, length, tuple(ring.ranks), pos, pieces,  # type: ignore[arg-type]
                    ring.algo, plan.gpus_per_node)
