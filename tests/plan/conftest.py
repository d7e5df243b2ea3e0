"""Shared by the planner tests: cost models, random batches, and the plan rules written out
independently of the planner (docs/plan-format.md rules 2 and 4, straight from their text)."""

from __future__ import annotations

from hypothesis import strategies as st

from hdp.plan import build_cost_model

COST = build_cost_model("tiny")
COST_7B = build_cost_model("llama-7b")


def rule2_members(length: int, ring_size: int) -> list[list[tuple[int, int]]]:
    """Rule 2: piece j = [floor(j*L/2k), floor((j+1)*L/2k)); member i holds pieces i and 2k-1-i."""
    n = 2 * ring_size
    pieces = [(j * length // n, (j + 1) * length // n) for j in range(n)]
    return [[pieces[i], pieces[n - 1 - i]] for i in range(ring_size)]


def rule4_fewest(length: int, limit: int) -> int:
    """Rule 4: the fewest ranks whose rule-2 members each hold at most ``limit`` tokens.

    The members' tokens add up to L, so fewer than ceil(L / limit) ranks never fit: start there."""
    k = max(1, -(-length // limit))
    while max(sum(b - a for a, b in m) for m in rule2_members(length, k)) > limit:
        k += 1
    return k


@st.composite
def batches(draw):
    """Random batches with the edge cases that matter: 1, C, C+1, near k*C, huge, many tiny."""
    capacity = draw(st.integers(1, 64))
    num_ranks = draw(st.integers(1, 12))
    edge = st.sampled_from([1, capacity, capacity + 1, 2 * capacity - 1, 2 * capacity + 1])
    cap_total = num_ranks * capacity
    length = st.one_of(edge, st.integers(1, capacity), st.integers(1, max(1, cap_total)))
    lengths = draw(st.lists(length.filter(lambda n: n <= cap_total), min_size=1, max_size=40))
    return [min(n, cap_total) for n in lengths], num_ranks, capacity
