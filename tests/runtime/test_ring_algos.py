"""Two-level and bidirectional ring attention across real processes (gloo), against full attention.

Six ranks declared as three nodes of two (``gpus_per_node=2``: nodes {0,1}, {2,3}, {4,5}). One
process group runs every case: two-level rings of 2 nodes x 2 and 3 nodes x 2 (one in a scrambled
rank order), rings that cannot run two-level (inside one node; not node-aligned) falling back to
flat, two rings in one micro-batch, rings whose pieces are partly empty (length 9 < 2k = 12) and with
members holding no token at all (length 2 on 4 and on 6 members), whole
documents beside ring pieces, no length divisible by 2k; bidirectional rings of 2, 3, 4 and 6 with
even (2) and uneven (3: halves of 1 and 2) KV-head halves, and one KV head (falls back to flat).
Each case checks which algorithm actually ran, and two "layers" on one micro-batch's metadata
(the reused transfer buffers must give the same exact result twice); the mixed plan also in bf16.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.distributed as dist

from hdp.runtime.attention.dispatch import MicroBatchAttention, hdp_attention
from hdp.runtime.attention.layout import build_layout
from hdp.runtime.attention.ring.select import effective_algo, node_grid, rings_by_algo, with_ring_algo
from tests.conftest import build_plan, dense_reference, free_port, token_index
from tests.runtime.test_attention_ring import _init, _start

WORLD, GPN = 6, 2
LENGTHS = [37, 19, 5, 53, 9, 23, 30, 6, 2]
ROUNDS = [
    [("doc", 2, 4), ("ring", 0, (0, 1, 2, 3)), ("ring", 1, (4, 5))],
    [("ring", 3, (4, 1, 0, 3, 5, 2))],
    [("ring", 4, (2, 3, 0, 1, 4, 5)), ("ring", 8, (3, 2, 1, 0))],
    [("doc", 7, 1), ("ring", 5, (0, 2, 3)), ("ring", 6, (1, 4, 5, 0))],
]
# What each ring runs when the plan asks two-level: (4, 5) is one node, (0, 2, 3) is uneven.
TWO_LEVEL_RAN = ["two-level", "flat", "two-level", "two-level", "two-level", "flat", "two-level"]


def _references(lengths: list[int], hq: int, hkv: int) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per sequence: q, k, v, dout and full-attention out, dq, dk, dv (float64, independent of hdp)."""
    refs = {}
    for i, n in enumerate(lengths):
        g = torch.Generator().manual_seed(2000 + i)
        q, k, v, dout = (torch.randn(n, h, 8, generator=g, dtype=torch.float64) for h in (hq, hkv, hkv, hq))
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, _ = dense_reference(*leaves, torch.zeros(n), torch.arange(n))
        out.backward(dout)
        refs[i] = (q, k, v, dout, out.detach(), *(t.grad for t in leaves))
    return refs


def _check(plan, rank: int, refs, label: str, ran: list[str], dtype=torch.float64, tol=1e-10) -> None:
    for mb in range(len(plan.ranks[rank].micro_batches)):
        layout = build_layout(plan, rank, mb)
        seq_ids, positions = token_index(layout)

        def rows(j):
            return torch.stack([refs[s][j][p] for s, p in zip(seq_ids.tolist(), positions.tolist())])

        batch = MicroBatchAttention(layout, timeout_s=30.0)
        for layer in range(2):
            q, k, v = (rows(j).to(dtype).requires_grad_() for j in range(3))
            out = hdp_attention(q, k, v, batch)
            out.backward(rows(3).to(dtype))
            where = f"{label}: rank {rank} micro-batch {mb} layer {layer}"
            assert [r.ran for r in batch.rings] == [ran[r.slot.ring_id] for r in batch.rings], where
            for name, got, j in (("out", out, 4), ("dq", q.grad, 5), ("dk", k.grad, 6), ("dv", v.grad, 7)):
                assert got.dtype == dtype
                torch.testing.assert_close(got.double(), rows(j), rtol=tol, atol=tol,
                                           msg=lambda m: f"{where} {name}: {m}")


def _bidirectional_plan():
    return build_plan(WORLD, LENGTHS, [
        [("doc", 2, 0), ("ring", 0, (3, 1)), ("ring", 1, (4, 0, 2)), ("ring", 7, (5, 0))],
        [("ring", 3, (5, 4, 3, 2, 1, 0)), ("ring", 8, (2, 0, 1, 4, 3, 5))],
        [("ring", 4, (0, 1, 2, 3, 4, 5)), ("ring", 5, (2, 4, 1, 5))],
    ])


def _rank(rank: int, world: int, port: int) -> None:
    _init(rank, world, port)
    plan = with_ring_algo(build_plan(WORLD, LENGTHS, ROUNDS), "two-level", GPN)
    _check(plan, rank, _references(LENGTHS, 4, 2), "two-level, GQA 4/2", TWO_LEVEL_RAN)
    bi = with_ring_algo(_bidirectional_plan(), "bidirectional", GPN)
    for hq, hkv in ((4, 2), (6, 3)):
        _check(bi, rank, _references(LENGTHS, hq, hkv), f"bidirectional, heads {hq}/{hkv}", ["bidirectional"] * 7)
    _check(bi, rank, _references(LENGTHS, 4, 1), "bidirectional, one KV head", ["flat"] * 7)
    # One plan mixing all three in one micro-batch (round 3: rank 0 holds a flat and a two-level ring).
    algos = ["bidirectional", "flat", "two-level", "bidirectional", "two-level", "bidirectional", "two-level"]
    plan = build_plan(WORLD, LENGTHS, ROUNDS)
    mixed = replace(plan, gpus_per_node=GPN, rings=tuple(replace(r, algo=a) for r, a in zip(plan.rings, algos)))
    refs = _references(LENGTHS, 4, 2)
    _check(mixed, rank, refs, "mixed", algos)
    # bf16 inputs, float32 merges and travelling dK/dV: the error stays at the inputs' rounding.
    _check(mixed, rank, refs, "mixed, bf16", algos, torch.bfloat16, 3e-2)
    dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.timeout(150)
def test_two_level_and_bidirectional_rings_equal_full_attention_forward_and_backward():
    _start(_rank, (WORLD, free_port()), WORLD)


def test_node_grid_groups_positions_by_node_and_refuses_uneven_rings():
    assert node_grid((4, 1, 0, 3, 5, 2), 2) == ((0, 4), (1, 2), (3, 5))
    assert node_grid((0, 1, 2, 3), 2) == ((0, 1), (2, 3))
    assert node_grid((0, 1, 2, 3), 4) is None  # one node: the flat ring is the inner ring
    assert node_grid((0, 2, 4), 2) is None  # one member per node: the flat ring is the outer ring
    assert node_grid((0, 1, 2), 2) is None  # 2 + 1
    assert node_grid((0, 1, 2, 3), 0) is None  # topology unknown


def test_effective_algo_and_rings_by_algo():
    assert effective_algo("two-level", (0, 1, 2, 3), 2, 1) == "two-level"
    assert effective_algo("two-level", (0, 2, 3), 2, 8) == "flat"
    assert effective_algo("bidirectional", (0, 5), 2, 1) == "flat"
    assert effective_algo("bidirectional", (0, 5), 2, 2) == "bidirectional"
    plan = with_ring_algo(build_plan(WORLD, LENGTHS, ROUNDS), "two-level", GPN)
    assert [r.algo for r in plan.rings] == TWO_LEVEL_RAN and plan.gpus_per_node == GPN
    assert rings_by_algo(plan, 2) == {"flat": 2, "two-level": 5}
    bi = with_ring_algo(plan, "bidirectional", None, num_kv_heads=1)
    assert rings_by_algo(bi, 1) == {"flat": 7}
    assert with_ring_algo(plan, None, None) is plan  # a planner's choices run as given
    with pytest.raises(ValueError, match="--ring-algo"):
        with_ring_algo(plan, "spiral", 2)


def test_variants_send_where_they_say():
    """Who each member sends to (the exactness test cannot see direction: a lane going the wrong way is
    still exact, just not bidirectional)."""
    from hdp.runtime.attention.ring.flat import RingContext
    from hdp.runtime.attention.ring.bidirectional import _peers
    from hdp.runtime.attention.ring.two_level import _Grid

    plan = with_ring_algo(build_plan(WORLD, LENGTHS, ROUNDS), "two-level", GPN)
    ring = RingContext(build_layout(plan, 1, 1).rings[0], 1)  # ring (4, 1, 0, 3, 5, 2): rank 1 is cell (1, 0)
    grid = _Grid(ring)
    assert (grid.a, grid.b) == (1, 0) and grid.inner_peers() == (0, 0) and grid.outer_peers() == (3, 4)
    bi = with_ring_algo(_bidirectional_plan(), "bidirectional", GPN)
    ring = RingContext(build_layout(bi, 4, 1).rings[0], 1)  # ring (5, 4, 3, 2, 1, 0): rank 4 at position 1
    assert _peers(ring, 0) == (3, 5) and _peers(ring, 1) == (5, 3)
