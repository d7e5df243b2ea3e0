"""Bidirectional ring attention: half the KV heads rotate forward around the ring, half backward.

A flat ring uses one direction of every link; this one splits the KV heads in two lanes (lane 0:
KV heads ``[0, Hkv//2)`` and their query heads, sent to the next member; lane 1: the rest, sent to
the previous member), so every step moves half the bytes over each direction of each link (the
head split of TokenRing). Attention is independent per head, so each lane is an exact flat ring on
its heads: in forward step s lane 0 holds the block of member ``i - s``, lane 1 that of ``i + s``;
both start from the local block, so every query sees its diagonal first. The backward is the flat
scheme (ring.py) per lane: each lane's dK/dV buffer follows its block one step behind, in the
lane's direction, and arrives home after k steps.

No deadlock, as for the flat ring (docs/attention.md): at every step each member posts *all* its
sends and receives of the step (both lanes) in one nonblocking batch before waiting on any, every
member runs the same steps in the same order, and a wait at step s only needs ops its peers post
at step s. The lanes' streams carry distinct tags; with a 2-member ring both lanes go to the same
peer, and the identical posting order (lane 0, then lane 1) pairs them on tag-blind backends too.
"""

from __future__ import annotations

import torch

from hdp.runtime.attention.matmul_attention import acc_dtype
from hdp.runtime.attention.pair_kernels import Kernel
from hdp.runtime.attention.ring.flat import TAG_DKV, TAG_KV, RingContext, check_rows
from hdp.runtime.attention.ring.blocks import backward_block, forward_block

TAG_KV_BACK = 15
TAG_DKV_BACK = 16
_TAGS = ((TAG_KV, TAG_DKV), (TAG_KV_BACK, TAG_DKV_BACK))
_DIRECTIONS = (1, -1)


def head_lanes(num_q_heads: int, num_kv_heads: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(query heads, KV heads) of each lane; GQA: query head h reads KV head h // (Hq // Hkv)."""
    half, group = num_kv_heads // 2, num_q_heads // num_kv_heads
    return ((slice(0, half * group), slice(0, half)), (slice(half * group, num_q_heads), slice(half, num_kv_heads)))


def _local_kvs(ring: RingContext, k: torch.Tensor, v: torch.Tensor, lanes) -> list[torch.Tensor]:
    out = []
    for lane, (_, kh) in enumerate(lanes):
        kv = ring.block(f"bi{lane}.local", ring.slot.position, k[:, kh])
        kv[0].copy_(k[:, kh])
        kv[1].copy_(v[:, kh])
        out.append(kv)
    return out


def _peers(ring: RingContext, lane: int) -> tuple[int, int]:
    """(rank this lane sends to, rank it receives from)."""
    slot, d = ring.slot, _DIRECTIONS[lane]
    return slot.ranks[(slot.position + d) % slot.size], slot.ranks[(slot.position - d) % slot.size]


class BidirectionalRingAttention(torch.autograd.Function):
    """Same contract as ``ring.RingAttention`` (needs at least two KV heads)."""

    @staticmethod
    def forward(ctx, q, k, v, ring: RingContext, scale: float, kernel: Kernel):  # type: ignore[override]
        slot, dt, size = ring.slot, acc_dtype(q.dtype), ring.slot.size
        lanes = head_lanes(q.shape[1], k.shape[1])
        q_pieces = ring.member_rows[slot.position]
        qs = [q[:, qh].contiguous() for qh, _ in lanes]
        outs = [torch.zeros(x.shape, dtype=dt, device=q.device) for x in qs]
        lses = [torch.full((x.shape[1], x.shape[0]), float("-inf"), dtype=dt, device=q.device) for x in qs]
        seen: list[set[int]] = [set(), set()]
        kvs = _local_kvs(ring, k, v, lanes)
        comm = ring.comm("bi.kv")
        for step in range(size):
            srcs = [(slot.position - d * step) % size for d in _DIRECTIONS]
            if step + 1 < size:  # both lanes' next blocks in flight while this step computes
                recvs = []
                for lane, d in enumerate(_DIRECTIONS):
                    recv = ring.block(f"bi{lane}.kv{step % 2}", (srcs[lane] - d) % size, kvs[lane])
                    dst, src = _peers(ring, lane)
                    recvs.append(comm.exchange(kvs[lane], dst, recv, src, tag=_TAGS[lane][0]))
                comm.commit()
            for lane in range(2):
                forward_block(qs[lane], q_pieces, kvs[lane], ring.member_rows[srcs[lane]], outs[lane], lses[lane],
                              seen[lane], scale, kernel)
            if step + 1 < size:
                comm.wait()
                kvs = recvs
        out = torch.cat(outs, dim=1).to(q.dtype)
        lse = torch.cat(lses, dim=0)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring, ctx.scale, ctx.kernel = ring, scale, kernel
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        ring: RingContext = ctx.ring
        slot, dt, size = ring.slot, acc_dtype(q.dtype), ring.slot.size
        lanes = head_lanes(q.shape[1], k.shape[1])
        q_pieces = ring.member_rows[slot.position]
        qs = [q[:, qh].contiguous() for qh, _ in lanes]
        douts = [dout[:, qh].contiguous() for qh, _ in lanes]
        outs = [out[:, qh].contiguous() for qh, _ in lanes]
        lses = [lse[qh] for qh, _ in lanes]
        dqs = [torch.zeros(x.shape, dtype=dt, device=q.device) for x in qs]
        kvs = _local_kvs(ring, k, v, lanes)
        kv_comm, grad_comm = ring.comm("bi.kv"), ring.comm("bi.dkv")
        recv_dkv: list[torch.Tensor] = []
        for step in range(size):
            srcs = [(slot.position - d * step) % size for d in _DIRECTIONS]
            nxts = [(s - d) % size for s, d in zip(srcs, _DIRECTIONS)]
            if step + 1 < size:
                recvs = []
                for lane in range(2):
                    recv = ring.block(f"bi{lane}.kv{step % 2}", nxts[lane], kvs[lane])
                    dst, src = _peers(ring, lane)
                    recvs.append(kv_comm.exchange(kvs[lane], dst, recv, src, tag=_TAGS[lane][0]))
                kv_comm.commit()
            dkvs = [ring.block(f"bi{lane}.dkv{step % 2}", srcs[lane], kvs[lane], dt).zero_() for lane in range(2)]
            for lane in range(2):
                backward_block(douts[lane], qs[lane], q_pieces, kvs[lane], ring.member_rows[srcs[lane]], outs[lane],
                               lses[lane], dqs[lane], dkvs[lane], ctx.scale, ctx.kernel)
            if step > 0:  # each lane's gradient from the members its block visited before
                grad_comm.wait()
                for lane in range(2):
                    dkvs[lane] += recv_dkv[lane]
            if step + 1 < size:
                kv_comm.wait()
                kvs = recvs
            # As in ring.py, per lane: pass the gradient on behind its block; the last step's receive
            # is this member's own block, complete.
            recv_dkv = []
            for lane in range(2):
                recv = ring.block(f"bi{lane}.dkv_recv", nxts[lane], kvs[lane], dt)
                dst, src = _peers(ring, lane)
                recv_dkv.append(grad_comm.exchange(dkvs[lane], dst, recv, src, tag=_TAGS[lane][1]))
            grad_comm.commit()
        grad_comm.wait()
        # torch.cat copies: the buffers are reused by the next layer's backward.
        dk = torch.cat([r[0] for r in recv_dkv], dim=1).to(k.dtype)
        dv = torch.cat([r[1] for r in recv_dkv], dim=1).to(v.dtype)
        return torch.cat(dqs, dim=1).to(q.dtype), dk, dv, None, None, None


def bidirectional_ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ring: RingContext,
                                 scale: float | None = None, kernel: Kernel = "auto") -> torch.Tensor:
    """Differentiable bidirectional ring attention for one ring slot (k needs >= 2 KV heads)."""
    if k.shape[1] < 2:
        raise ValueError(f"ring {ring.slot.ring_id}: a bidirectional ring needs >= 2 KV heads, got {k.shape[1]}")
    return BidirectionalRingAttention.apply(q, k, v, ring, check_rows(q, k, ring, scale), kernel)
