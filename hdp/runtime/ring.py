"""Ring attention over the zig-zag pieces of one split sequence, forward and backward.

Member i of a k-member ring holds pieces i and 2k-1-i (its "local block": queries, keys, values).
Forward, step s = 0..k-1: the K/V block that originated at member (i - s) mod k is here; post
sending it to the next member (and receiving the one from the previous) *before* computing on it,
then merge the block's partial output by log-sum-exp. Step 0 is the local block, so every query
has seen at least itself before any merge (its running lse is finite).

Backward (the ring-flash-attention scheme): K/V travel the same way again; each member recomputes
every block against its saved final ``out``/``lse``, keeps dQ locally, and adds its share of dK/dV
to a gradient buffer that travels *with* the block one step behind it. After k steps a block's
buffer has visited every member and arrives back at its origin with the full dK/dV.

Causality between blocks follows from the pieces' global order (pair_kernels.py): query piece p
sees key piece r fully if r < p, causally if r == p, not at all if r > p, so pieces of unequal
length (floor-rounded zig-zag) and empty pieces (skipped) need no special case.
"""

from __future__ import annotations

import torch

from hdp.runtime.blocks import acc_dtype, merge
from hdp.runtime.layout import RingSlot
from hdp.runtime.pair_kernels import Kernel, pair_backward, pair_forward
from hdp.runtime.ring_comm import RingComm

TAG_KV = 11
TAG_DKV = 12


def member_pieces(slot: RingSlot, member: int) -> tuple[tuple[int, int, int], ...]:
    """``(piece index, first row, end row)`` of member ``member``'s two pieces in its own block."""
    k, rows = slot.size, 0
    out = []
    for j, (a, b) in zip((member, 2 * k - 1 - member), slot.member_ranges(member)):
        out.append((j, rows, rows + b - a))
        rows += b - a
    return tuple(out)


def visible_pairs(q_pieces, k_pieces):
    """Non-empty (query piece, key piece, causal) pairs a query can see: key piece index <= query's."""
    for jq, qa, qb in q_pieces:
        for jk, ka, kb in k_pieces:
            if qb > qa and kb > ka and jk <= jq:
                yield (qa, qb), (ka, kb), jk == jq


class RingAttention(torch.autograd.Function):
    """``out = softmax(causal(q kᵀ)) v`` over a whole split sequence, from this member's rows only.

    q [n, Hq, D], k/v [n, Hkv, D] are this member's rows (piece i, then piece 2k-1-i); returns
    out [n, Hq, D] in q's dtype. Every member of the ring must call it for the same ring, in the
    same (ring-id) order, with matching shapes.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, q, k, v, slot: RingSlot, mb_index: int, scale: float, timeout_s: float | None, kernel: Kernel
    ):
        dt = acc_dtype(q.dtype)
        q_pieces = member_pieces(slot, slot.position)
        out = torch.zeros(q.shape, dtype=dt, device=q.device)
        lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=dt, device=q.device)
        seen: set[int] = set()  # first row of each query piece that has a partial result yet
        kv = torch.stack([k, v])  # [2, n, Hkv, D]: one message per step, K and V together
        comm = RingComm(slot.ring_id, mb_index, slot.prev_rank, slot.next_rank, timeout_s)
        for step in range(slot.size):
            src = (slot.position - step) % slot.size  # member whose K/V block is in `kv`
            if step + 1 < slot.size:  # post the next transfer before computing on this block
                nxt = (src - 1) % slot.size
                next_kv = comm.send_recv(kv, (2, slot.member_tokens(nxt), *kv.shape[2:]), tag=TAG_KV)
                comm.commit()
            for (qa, qb), (ka, kb), causal in visible_pairs(q_pieces, member_pieces(slot, src)):
                o, l = pair_forward(q[qa:qb], kv[0, ka:kb], kv[1, ka:kb], causal, scale, kernel)
                if qa in seen:
                    o, l = merge(out[qa:qb], lse[:, qa:qb], o, l)
                seen.add(qa)
                out[qa:qb], lse[:, qa:qb] = o, l
            if step + 1 < slot.size:
                comm.wait()
                kv = next_kv
        # Step 0 gave every non-empty query piece its causal diagonal, so every lse is finite.
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.slot, ctx.mb_index, ctx.scale, ctx.timeout_s, ctx.kernel = slot, mb_index, scale, timeout_s, kernel
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        slot: RingSlot = ctx.slot
        q_pieces = member_pieces(slot, slot.position)
        dt = acc_dtype(q.dtype)
        kv = torch.stack([k, v])
        kv_comm = RingComm(slot.ring_id, ctx.mb_index, slot.prev_rank, slot.next_rank, ctx.timeout_s)
        grad_comm = RingComm(slot.ring_id, ctx.mb_index, slot.prev_rank, slot.next_rank, ctx.timeout_s)
        dq = torch.zeros(q.shape, dtype=dt, device=q.device)
        recv_dkv = None
        for step in range(slot.size):
            src = (slot.position - step) % slot.size
            nxt = (src - 1) % slot.size
            if step + 1 < slot.size:
                next_kv = kv_comm.send_recv(kv, (2, slot.member_tokens(nxt), *kv.shape[2:]), tag=TAG_KV)
                kv_comm.commit()
            dkv = torch.zeros((2, *kv.shape[1:]), dtype=dt, device=q.device)  # this block's share
            for (qa, qb), (ka, kb), causal in visible_pairs(q_pieces, member_pieces(slot, src)):
                g_q, g_k, g_v = pair_backward(dout[qa:qb], q[qa:qb], kv[0, ka:kb], kv[1, ka:kb], out[qa:qb],
                                              lse[:, qa:qb], causal, ctx.scale, ctx.kernel)
                dq[qa:qb] += g_q
                dkv[0, ka:kb] += g_k
                dkv[1, ka:kb] += g_v
            if step > 0:
                # Add the block's gradient from the members it visited before this one.
                grad_comm.wait()
                dkv += recv_dkv
            if step + 1 < slot.size:
                kv_comm.wait()
                kv = next_kv
            # Pass this block's gradient on (float32/64: no bf16 rounding per hop); receive the one
            # for the block we hold next step (origin src - 1). At the last step the block sent is
            # origin position + 1, which the next member owns, and the one received is our own, complete.
            recv_dkv = grad_comm.send_recv(dkv, (2, slot.member_tokens(nxt), *kv.shape[2:]), tag=TAG_DKV)
            grad_comm.commit()
        grad_comm.wait()
        dk, dv = recv_dkv[0], recv_dkv[1]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def ring_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot: RingSlot, mb_index: int,
    scale: float | None = None, timeout_s: float | None = 60.0, kernel: Kernel = "auto",
) -> torch.Tensor:
    """Differentiable ring attention for one ring slot; see ``RingAttention``.

    ``kernel`` picks the pair kernel (pair_kernels.py); "auto" chooses by device and dtype.
    """
    if q.shape[0] != slot.num_tokens or k.shape[0] != slot.num_tokens:
        raise ValueError(f"ring {slot.ring_id}: {slot.num_tokens} local tokens but q has {q.shape[0]}, k {k.shape[0]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return RingAttention.apply(q, k, v, slot, mb_index, scale, timeout_s, kernel)
