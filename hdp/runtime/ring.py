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

Causality uses global positions (``q_pos >= k_pos``), so pieces of unequal length (floor-rounded
zig-zag) and empty pieces need no special case; a block no query can see is skipped.
"""

from __future__ import annotations

import torch

from hdp.runtime.blocks import acc_dtype, any_visible, block_backward, block_forward, merge
from hdp.runtime.layout import RingSlot
from hdp.runtime.ring_comm import RingComm

TAG_KV = 11
TAG_DKV = 12


def member_positions(slot: RingSlot, member: int, device: torch.device) -> torch.Tensor:
    """Global positions of member ``member``'s tokens, in its buffer order (piece i, then 2k-1-i)."""
    return torch.cat([torch.arange(a, b, device=device) for a, b in slot.member_ranges(member)])


class RingAttention(torch.autograd.Function):
    """``out = softmax(causal(q kᵀ)) v`` over a whole split sequence, from this member's rows only.

    q [n, Hq, D], k/v [n, Hkv, D] are this member's rows (piece i, then piece 2k-1-i); returns
    out [n, Hq, D] in q's dtype. Every member of the ring must call it for the same ring, in the
    same (ring-id) order, with matching shapes.
    """

    @staticmethod
    def forward(ctx, q, k, v, slot: RingSlot, mb_index: int, scale: float, timeout_s: float | None):  # type: ignore[override]
        num_q_heads = q.shape[1]
        pos = [member_positions(slot, j, q.device) for j in range(slot.size)]
        q_pos = pos[slot.position]
        kv = torch.stack([k, v])  # [2, n, Hkv, D]: one message per step, K and V together
        comm = RingComm(slot.ring_id, mb_index, slot.prev_rank, slot.next_rank, timeout_s)
        out = lse = None
        for step in range(slot.size):
            src = (slot.position - step) % slot.size  # member whose K/V block is in `kv`
            if step + 1 < slot.size:
                nxt = (src - 1) % slot.size
                next_kv = comm.send_recv(kv, (2, slot.member_tokens(nxt), *kv.shape[2:]), tag=TAG_KV)
                comm.commit()
            if any_visible(q_pos, pos[src]):
                b_out, b_lse = block_forward(q, kv[0], kv[1], q_pos, pos[src], scale)
                out, lse = (b_out, b_lse) if out is None else merge(out, lse, b_out, b_lse)
            if step + 1 < slot.size:
                comm.wait()
                kv = next_kv
        if out is None:  # a member with no tokens (ring longer than the sequence's 2k pieces allow)
            dt = acc_dtype(q.dtype)
            out = torch.zeros(q.shape, dtype=dt, device=q.device)
            lse = torch.zeros((num_q_heads, 0), dtype=dt, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.slot, ctx.mb_index, ctx.scale, ctx.timeout_s = slot, mb_index, scale, timeout_s
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        slot: RingSlot = ctx.slot
        pos = [member_positions(slot, j, q.device) for j in range(slot.size)]
        q_pos = pos[slot.position]
        dt = acc_dtype(q.dtype)
        kv = torch.stack([k, v])
        kv_comm = RingComm(slot.ring_id, ctx.mb_index, slot.prev_rank, slot.next_rank, ctx.timeout_s)
        grad_comm = RingComm(slot.ring_id, ctx.mb_index, slot.prev_rank, slot.next_rank, ctx.timeout_s)
        dq = torch.zeros(q.shape, dtype=dt, device=q.device)
        recv_dkv = None
        for step in range(slot.size):
            src = (slot.position - step) % slot.size
            if step + 1 < slot.size:
                next_kv = kv_comm.send_recv(kv, (2, slot.member_tokens((src - 1) % slot.size), *kv.shape[2:]), tag=TAG_KV)
                kv_comm.commit()
            if any_visible(q_pos, pos[src]):
                b_dq, b_dk, b_dv = block_backward(dout, q, kv[0], kv[1], out, lse, q_pos, pos[src], ctx.scale)
                dq += b_dq
                dkv = torch.stack([b_dk, b_dv])
            else:
                dkv = torch.zeros((2, *kv.shape[1:]), dtype=dt, device=q.device)
            if step > 0:
                # The block's gradient so far, from the members it visited before this one.
                grad_comm.wait()
                dkv = dkv + recv_dkv
            if step + 1 < slot.size:
                kv_comm.wait()
                kv = next_kv
            # Pass this block's gradient on; receive the one for the block we hold next step
            # (origin src - 1). At the last step the block sent is origin position + 1, which the
            # next member owns, and the one received is our own, complete.
            nxt = (src - 1) % slot.size
            recv_dkv = grad_comm.send_recv(dkv, (2, slot.member_tokens(nxt), *kv.shape[2:]), tag=TAG_DKV)
            grad_comm.commit()
        grad_comm.wait()
        dk, dv = recv_dkv[0], recv_dkv[1]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def ring_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot: RingSlot, mb_index: int,
    scale: float | None = None, timeout_s: float | None = 60.0,
) -> torch.Tensor:
    """Differentiable ring attention for one ring slot; see ``RingAttention``."""
    if q.shape[0] != slot.num_tokens or k.shape[0] != slot.num_tokens:
        raise ValueError(f"ring {slot.ring_id}: {slot.num_tokens} local tokens but q has {q.shape[0]}, k {k.shape[0]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return RingAttention.apply(q, k, v, slot, mb_index, scale, timeout_s)
