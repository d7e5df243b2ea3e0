"""Single-process tests of the attention layer: layouts, document-masked attention, block kernels."""

from __future__ import annotations

import pytest
import torch

from hdp.plan import build_cost_model, make_plan
from hdp.plan.zigzag import zigzag_piece
from hdp.plan.types import MicroBatch, Plan, RankPlan, Segment
from hdp.runtime.attention.dispatch import MicroBatchAttention, hdp_attention
from hdp.runtime.attention.doc_attention import doc_attention, reference_doc_attention
from hdp.runtime.attention.layout import build_layout
from hdp.runtime.attention.matmul_attention import block_backward, block_forward, merge
from hdp.runtime.attention.ring.comm import RingComm, RingCommError
from tests.conftest import DIM, HKV, HQ, build_plan, dense_reference, seq_tensors, token_index

pytestmark = pytest.mark.timeout(120)


def all_layouts(plan):
    for rp in plan.ranks:
        for i in range(len(rp.micro_batches)):
            yield build_layout(plan, rp.rank, i)


def planner_plan():
    lengths = [37, 5, 9, 3, 60, 4, 16, 1]
    return make_plan(lengths, num_ranks=5, capacity=16, cost=build_cost_model("tiny"))


def edge_plan():
    # seq 0 (len 9) on a 5-ring has an empty piece 0; seq 1 (len 2) on a 3-ring leaves member 1 with
    # no tokens at all; seq 2 is a whole doc beside ring pieces.
    return build_plan(5, [9, 2, 4], [[("doc", 2, 1), ("ring", 0, (0, 1, 2, 3, 4)), ("ring", 1, (2, 1, 4))]])


@pytest.mark.parametrize("make", [planner_plan, edge_plan])
def test_layout_places_every_token_once_at_its_global_position(make):
    plan = make()
    seen = {s.id: torch.zeros(s.length, dtype=torch.int64) for s in plan.sequences}
    for lay in all_layouts(plan):
        seq_ids, positions = token_index(lay)
        assert seq_ids.shape == positions.shape == (lay.num_tokens,)
        for s, p in zip(seq_ids.tolist(), positions.tolist()):
            seen[s][p] += 1
        assert [r.ring_id for r in lay.rings] == sorted(r.ring_id for r in lay.rings)
        assert lay.doc_cu_seqlens[-1] == sum(d.num_tokens for d in lay.docs)
        for d in lay.docs:
            assert (d.pos_start, d.num_tokens) == (0, plan.sequences[d.seq].length)
        for slot in lay.rings:
            ring = plan.rings[slot.ring_id]
            assert slot.ranks == ring.ranks and slot.rank == lay.rank
            assert slot.prev_rank == ring.ranks[slot.position - 1]
            assert slot.next_rank == ring.ranks[(slot.position + 1) % ring.size]
            for piece, j in zip(slot.pieces, (slot.position, 2 * ring.size - 1 - slot.position)):
                a, b = zigzag_piece(slot.seq_len, ring.size, j)
                assert (piece.pos_start, piece.num_tokens) == (a, b - a)
                assert torch.equal(positions[piece.start:piece.end], torch.arange(a, b))
            assert slot.num_tokens == slot.member_tokens(slot.position)
    for s in plan.sequences:
        assert torch.equal(seen[s.id], torch.ones(s.length, dtype=torch.int64)), f"sequence {s.id}"


def test_layout_of_member_with_no_tokens():
    lay = build_layout(edge_plan(), 1, 0)
    (slot_a, slot_b) = lay.rings
    assert (slot_a.ring_id, slot_b.ring_id) == (0, 1)
    assert slot_b.num_tokens == 0 and slot_b.position == 1
    assert [d.seq for d in lay.docs] == [2]


def test_layout_rejects_plans_attention_cannot_run():
    plan = planner_plan()
    with pytest.raises(ValueError, match="rank 9"):
        build_layout(plan, 9, 0)
    with pytest.raises(ValueError, match="no micro-batch 7"):
        build_layout(plan, 0, 7)
    partial = Plan("test", 1, 8, plan.sequences[:1], (), (RankPlan(0, (MicroBatch((Segment(0, 0, 5),)),)),))
    with pytest.raises(ValueError, match="lists no ring"):
        build_layout(partial, 0, 0)
    good = build_plan(2, [10], [[("ring", 0, (0, 1))]])
    bad_mb = MicroBatch((Segment(0, 0, 3), Segment(0, 8, 10)), (0,))
    bad = Plan("test", 2, 8, good.sequences, good.rings, (RankPlan(0, (bad_mb,)), good.ranks[1]))
    with pytest.raises(ValueError, match="must hold pieces"):
        build_layout(bad, 0, 0)


def packed_docs(lengths, dtype=torch.float64):
    qs, ks, vs, ds = zip(*(seq_tensors(i, n, dtype) for i, n in enumerate(lengths)))
    seq_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    positions = torch.cat([torch.arange(n) for n in lengths])
    return torch.cat(qs), torch.cat(ks), torch.cat(vs), torch.cat(ds), seq_ids, positions


@pytest.mark.parametrize("fn", [doc_attention, reference_doc_attention])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_doc_attention_matches_dense_reference(fn, dtype, tol):
    lengths = [1, 7, 3, 16, 2]
    q, k, v, dout, seq_ids, positions = packed_docs(lengths, dtype)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = fn(*leaves, cu)
    assert out.dtype == dtype and lse.dtype == dtype and lse.shape == (HQ, sum(lengths))
    out.backward(dout)
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = dense_reference(*ref_leaves, seq_ids, positions)
    ref_out.backward(dout)
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(lse, ref_lse.detach(), rtol=tol, atol=tol)
    for got, ref in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, ref.grad, rtol=tol, atol=tol)


def test_hdp_attention_whole_docs_needs_no_process_group():
    lengths = [5, 1, 12, 3]
    plan = build_plan(1, lengths, [[("doc", 2, 0), ("doc", 0, 0)], [("doc", 1, 0), ("doc", 3, 0)]])
    for lay in all_layouts(plan):
        seq_ids, positions = token_index(lay)
        per_seq = [seq_tensors(i, n) for i, n in enumerate(lengths)]
        q, k, v, dout = (torch.stack([per_seq[s][j][p] for s, p in zip(seq_ids.tolist(), positions.tolist())])
                         for j in range(4))
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = hdp_attention(*leaves, MicroBatchAttention(lay, timeout_s=1.0))
        out.backward(dout)
        ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        ref_out, _ = dense_reference(*ref_leaves, seq_ids, positions)
        ref_out.backward(dout)
        torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
        for got, ref in zip(leaves, ref_leaves):
            torch.testing.assert_close(got.grad, ref.grad, rtol=1e-10, atol=1e-10)


def any_visible(q_pos: torch.Tensor, k_pos: torch.Tensor) -> bool:
    """Whether some query may attend some key; a False block is skipped (and would give NaN rows)."""
    return q_pos.numel() > 0 and k_pos.numel() > 0 and bool(q_pos.max() >= k_pos.min())


@pytest.mark.parametrize("ring_size,length", [(2, 11), (3, 23), (5, 9), (3, 2)])
def test_zigzag_blocks_merged_in_ring_order_equal_full_attention(ring_size, length):
    """The ring's arithmetic without the wire: every member merges all K/V blocks in ring order."""
    q, k, v, dout = seq_tensors(0, length)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = dense_reference(*leaves, torch.zeros(length), torch.arange(length))
    ref_out.backward(dout)
    ref_dq, ref_dk, ref_dv = (t.grad for t in leaves)
    pos = [torch.cat([torch.arange(*zigzag_piece(length, ring_size, j)),
                      torch.arange(*zigzag_piece(length, ring_size, 2 * ring_size - 1 - j))])
           for j in range(ring_size)]
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    scale = DIM ** -0.5
    for i in range(ring_size):
        out = lse = None
        order = [(i - s) % ring_size for s in range(ring_size)]
        for src in order:
            if any_visible(pos[i], pos[src]):
                b = block_forward(q[pos[i]], k[pos[src]], v[pos[src]], pos[i], pos[src], scale)
                out, lse = b if out is None else merge(out, lse, *b)
        if pos[i].numel() == 0:
            continue
        torch.testing.assert_close(out, ref_out.detach()[pos[i]], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse, ref_lse.detach()[:, pos[i]], rtol=1e-12, atol=1e-12)
        dq = torch.zeros_like(q[pos[i]])
        for src in order:
            if any_visible(pos[i], pos[src]):
                gq, gk, gv = block_backward(dout[pos[i]], q[pos[i]], k[pos[src]], v[pos[src]], out, lse,
                                            pos[i], pos[src], scale)
                dq += gq
                dk[pos[src]] += gk
                dv[pos[src]] += gv
        torch.testing.assert_close(dq, ref_dq[pos[i]], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dk, ref_dk, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dv, ref_dv, rtol=1e-10, atol=1e-10)


def test_ring_comm_raises_on_misuse():
    comm = RingComm(ring_id=3, mb_index=0, prev_rank=1, next_rank=1, timeout_s=1.0)
    with pytest.raises(RingCommError, match="wait without commit"):
        comm.wait()
    comm.send_recv(torch.zeros(0, HKV, DIM), torch.zeros(0, HKV, DIM))  # empty: nothing posted, no group needed
    with pytest.raises(ValueError, match="contiguous"):
        comm.send_recv(torch.zeros(0), torch.zeros(2, 3).t())
    comm.commit()
    with pytest.raises(RingCommError, match="commit twice"):
        comm.commit()
    with pytest.raises(RingCommError, match="send_recv after commit"):
        comm.send_recv(torch.zeros(0), torch.zeros(0))
    comm.wait()
    with pytest.raises(ValueError, match="timeout_s"):
        RingComm(0, 0, 1, 1, timeout_s=0)


@pytest.mark.parametrize("causal,nq,nk", [(True, 7, 7), (False, 5, 9), (True, 1, 1), (False, 1, 4)])
def test_fused_pair_kernel_equals_matmul_kernel(causal, nq, nk):
    from hdp.runtime.attention.pair_kernels import choose_kernel, pair_backward, pair_forward

    g = torch.Generator().manual_seed(nq * 10 + nk)
    q, dout = (torch.randn(nq, HQ, DIM, generator=g, dtype=torch.float64) for _ in range(2))
    k, v = (torch.randn(nk, HKV, DIM, generator=g, dtype=torch.float64) for _ in range(2))
    assert choose_kernel(q) == "cpu_flash"
    fused = pair_forward(q, k, v, causal, 0.3, "cpu_flash")
    exact = pair_forward(q, k, v, causal, 0.3, "matmul")
    fused_grads = pair_backward(dout, q, k, v, *fused, causal, 0.3, "cpu_flash")
    exact_grads = pair_backward(dout, q, k, v, *exact, causal, 0.3, "matmul")
    for a, b in zip(fused + fused_grads, exact + exact_grads):
        assert a.dtype == torch.float64 and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_hdp_attention_rejects_buffers_that_do_not_match_the_layout():
    lay = build_layout(build_plan(1, [5, 3], [[("doc", 0, 0), ("doc", 1, 0)]]), 0, 0)
    batch = MicroBatchAttention(lay)
    q, kv = torch.randn(8, HQ, DIM), torch.randn(8, HKV, DIM)
    with pytest.raises(ValueError, match="has 8 tokens"):
        hdp_attention(q[:7], kv, kv, batch)
    with pytest.raises(ValueError, match="not a multiple"):
        hdp_attention(q, torch.randn(8, 3, DIM), torch.randn(8, 3, DIM), batch)
