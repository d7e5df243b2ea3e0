"""The zig-zag rule (docs/plan-format.md rules 2 and 4), in one place.

A sequence of length L split over a ring of k ranks is cut into 2k pieces,
piece j = [floor(j*L/2k), floor((j+1)*L/2k)); the member at ring position i holds pieces i and 2k-1-i,
pairing an early piece with its mirror so every member does the same causal-attention work.
The planner, the validator, the runtime layout and ring attention all derive pieces from here.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from itertools import islice, repeat
from operator import add, floordiv, sub

from hdp.plan.types import Segment


def zigzag_piece(length: int, ring_size: int, j: int) -> tuple[int, int]:
    """Piece j of 2k: ``[floor(j*L/2k), floor((j+1)*L/2k))``."""
    n = 2 * ring_size
    return (j * length) // n, ((j + 1) * length) // n


def member_pieces(length: int, ring_size: int, position: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Token ranges of pieces ``position`` and ``2k-1-position`` (either may be empty)."""
    return zigzag_piece(length, ring_size, position), zigzag_piece(length, ring_size, 2 * ring_size - 1 - position)


def member_segments(seq: int, length: int, ring_size: int, position: int) -> tuple[Segment, ...]:
    """The member's pieces as plan segments; a piece with no tokens has no segment (rule 2)."""
    return tuple(Segment(seq, a, b) for a, b in member_pieces(length, ring_size, position) if b > a)


def _cuts(length: int, ring_size: int) -> list[int]:
    """The 2k + 1 piece boundaries at once: piece j is ``[cuts[j], cuts[j + 1])`` (one C-level
    pass: a static mesh cuts thousands of sequences into a thousand pieces each)."""
    n = 2 * ring_size
    return list(map(floordiv, range(0, (n + 1) * length, length), repeat(n, n + 1))) if length else [0] * (n + 1)


def ring_pieces(seq: int, length: int, ring_size: int) -> tuple[list[Segment | None], list[Segment | None]]:
    """Every member's two pieces at once, as segments (None: a piece with no tokens): ``fronts[i]``
    is piece i, ``backs[i]`` piece 2k-1-i. C-level passes, without a Python step per member: what
    a static plan's millions of segments are built from."""
    k, n = ring_size, 2 * ring_size
    if length >= n:  # every piece holds at least floor(L / 2k) >= 1 token
        c = _cuts(length, k)
        pieces = list(map(tuple.__new__, repeat(Segment, n), zip(repeat(seq, n), c, islice(c, 1, None))))
        return pieces[:k], pieces[:k - 1:-1]
    # Fewer tokens than pieces: each non-empty piece is one token, token t in piece
    # j = ceil((t+1) 2k / L) - 1 (increasing in t); pieces j >= k are the backs of members 2k-1-j.
    js = list(map(floordiv, range(n - 1, length * n, n), repeat(length, length)))
    pieces = list(map(tuple.__new__, repeat(Segment, length), zip(repeat(seq, length), range(length), range(1, length + 1))))
    split = bisect_left(js, k)
    fronts: list[Segment | None] = [None] * k
    backs: list[Segment | None] = [None] * k
    deque(map(fronts.__setitem__, js[:split], pieces[:split]), maxlen=0)  # scatter, C-level
    deque(map(backs.__setitem__, map(sub, repeat(n - 1), js[split:]), pieces[split:]), maxlen=0)
    return fronts, backs


def ring_segments(seq: int, length: int, ring_size: int) -> list[tuple[Segment, ...]]:
    """``member_segments`` of every position at once (``ring_pieces`` paired)."""
    fronts, backs = ring_pieces(seq, length, ring_size)
    if length >= 2 * ring_size:
        return list(zip(fronts, backs))
    return [tuple(filter(None, pair)) for pair in zip(fronts, backs)]


def member_shares(length: int, ring_size: int) -> list[int]:
    """Tokens each ring member holds; within 2 tokens of L/k."""
    c, k = _cuts(length, ring_size), ring_size
    d = list(map(sub, islice(c, 1, None), c))
    return list(map(add, d[:k], d[:k - 1:-1]))


def max_member_tokens(length: int, ring_size: int) -> int:
    """The largest member's tokens, in O(1): ``max(member_shares(L, k))``.

    With n = 2k and L = q*n + r, member i holds A(i+1) - A(i) tokens where
    A(i) = floor(iL/n) + ceil(iL/n); each step of floor(iL/n) is q or q+1 (a "carry"), so a member
    holds 2q, 2q+1 or 2q+2 tokens. r = 0: all hold 2q = L/k. Else member 0 holds 2q+1, and some
    member holds 2q+2 exactly when a carry lands off a multiple of n: the first k steps carry
    floor(r/2) times, floor(g/2) of them onto multiples of n (g = gcd(r, n)), and floor(r/2) >
    floor(g/2) unless r = g (r divides n).
    """
    n = 2 * ring_size
    q, r = divmod(length, n)
    if r == 0:
        return 2 * q
    return 2 * q + (1 if math.gcd(r, n) == r else 2)


def ranks_needed(length: int, token_limit: int) -> int:
    """Rule 4: the fewest ranks whose zig-zag members each hold at most ``token_limit`` tokens.

    This is ``ceil(L / limit)`` except when L lies within about 2k tokens below k * limit: the
    floor-rounded pieces then give one member ceil(L/k) + 1 tokens, so more ranks are used. With
    an even limit k0 = ceil(L / limit) always holds (shares are at most 2*floor(L/2k) + 2); with an
    odd one the walk from k0 is at most about L / limit**2 steps of O(1) each.
    """
    if token_limit < 1:
        raise ValueError(f"token_limit must be >= 1, got {token_limit}")
    k = -(-length // token_limit)
    while k > 1 and max_member_tokens(length, k) > token_limit:
        k += 1
    return k
