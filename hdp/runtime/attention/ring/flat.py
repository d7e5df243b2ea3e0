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

What does not change between layers lives in a ``RingContext``, built once per micro-batch and
shared by every layer's forward and backward: the members' piece rows, the peers, the timeout, and
the transfer buffers (double-buffered receive blocks, the travelling dK/dV buffers), which are
allocated on first use and reused by every later layer instead of allocated per call.

This is the ``flat`` ring. The node-aware ``two-level`` ring (ring_two_level.py) and the head-split
``bidirectional`` ring (ring_bidirectional.py) share its context and its per-block compute
(ring_blocks.py); ring_select.py says which one a ring runs.
"""

from __future__ import annotations

import math

import torch

from hdp.runtime.attention.layout import RingSlot
from hdp.runtime.attention.matmul_attention import acc_dtype
from hdp.runtime.attention.pair_kernels import Kernel
from hdp.runtime.attention.ring.blocks import backward_block, forward_block, visible_pairs  # noqa: F401 - re-exported
from hdp.runtime.attention.ring.comm import RingComm
from hdp.runtime.attention.ring.select import effective_algo, node_grid
from hdp.runtime.parallel import groups as run_groups

TAG_KV = 11
TAG_DKV = 12

SECOND_GROUP_STREAMS = frozenset({"dkv", "2l.kv_outer", "2l.dkv_outer", "bi.dkv"})
"""Streams posted on the run's second group (``parallel.groups``), the rest on the world group.

NCCL runs each group's batched P2P in issue order on one stream. A two-level ring's outer (NIC)
transfer of a round must not hold up the round's inner (NVLink) ones, so outer K/V and dK/dV go on
the second group and all inner traffic stays on the world group (inner dK/dV on the second group
would queue behind the round's outer K/V). Flat and bidirectional rings have no outer traffic:
their dK/dV go on the second group, so a gradient hop never waits behind the next K/V block.
"""


def _member_rows(slot: RingSlot, member: int) -> tuple[tuple[int, int, int], ...]:
    """``(piece index, first row, end row)`` of member ``member``'s two pieces in its own block."""
    k, rows = slot.size, 0
    out = []
    for j, (a, b) in zip((member, 2 * k - 1 - member), slot.member_ranges(member)):
        out.append((j, rows, rows + b - a))
        rows += b - a
    return tuple(out)


class RingContext:
    """One ring slot of one micro-batch on this rank: what every layer's ring attention shares.

    ``timeout_s`` is how long a transfer may wait for a peer (``RingTimeoutError`` past it; None:
    no deadline, the process group's watchdog only). Buffers are keyed by shape and dtype, so a
    model whose layers differ in head count still works; with equal layers they are allocated once.
    """

    def __init__(self, slot: RingSlot, mb_index: int, timeout_s: float | None = 60.0,
                 groups: run_groups.Groups | None = None) -> None:
        self.slot, self.mb_index, self.timeout_s = slot, mb_index, timeout_s
        self.groups = run_groups.current() if groups is None else groups
        """The run's process groups (made once at start-up); which stream uses which: ``SECOND_GROUP_STREAMS``."""
        self._comms: dict[str, RingComm] = {}
        # One comm for K/V and one for dK/dV; reusable after each wait (forward and backward never overlap).
        self.kv_comm = self.comm("kv")
        self.grad_comm = self.comm("dkv")
        self.member_rows = tuple(_member_rows(slot, m) for m in range(slot.size))
        self.member_tokens = tuple(slot.member_tokens(m) for m in range(slot.size))
        self._buffers: dict[tuple, torch.Tensor] = {}
        self.allocations = 0
        """Transfer buffers allocated so far (constant after the first layer's forward and backward)."""
        self.grid = node_grid(slot.ranks, slot.gpus_per_node) if slot.algo == "two-level" else None
        """The two-level ring's node grid of ring positions (ring_select.node_grid); None otherwise."""
        self.ran: str | None = None
        """The algorithm the last call ran (ring_select.effective_algo)."""

    def algo(self, num_kv_heads: int) -> str:
        """The algorithm this ring runs for a layer with ``num_kv_heads`` KV heads."""
        slot = self.slot
        return effective_algo(slot.algo, slot.ranks, slot.gpus_per_node, num_kv_heads)

    def comm(self, name: str) -> RingComm:
        """A named transfer stream of this ring (one pending batch each), created on first use."""
        comm = self._comms.get(name)
        if comm is None:
            slot, groups = self.slot, self.groups
            group = groups.second if name in SECOND_GROUP_STREAMS else groups.world
            comm = self._comms[name] = RingComm(slot.ring_id, self.mb_index, slot.prev_rank, slot.next_rank,
                                                self.timeout_s, group, groups.global_rank)
        return comm

    def block(self, role: str, member: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A contiguous [2, member's tokens, Hkv, D] view of a reusable buffer sized for the largest member.

        The caller makes sure no transfer still reads or writes it (see the ring loops).
        """
        dtype = dtype or like.dtype
        row = math.prod(like.shape[-2:])  # Hkv * D
        key = (role, row, dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(2 * max(self.member_tokens) * row, dtype=dtype, device=like.device)
            self.allocations += 1
        n = self.member_tokens[member]
        return buf[:2 * n * row].view(2, n, *like.shape[-2:])


def _local_kv(ring: RingContext, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """K and V of this member in one [2, n, Hkv, D] message (a reused buffer, not a new stack)."""
    kv = ring.block("local", ring.slot.position, k)
    kv[0].copy_(k)
    kv[1].copy_(v)
    return kv


class RingAttention(torch.autograd.Function):
    """``out = softmax(causal(q kᵀ)) v`` over a whole split sequence, from this member's rows only.

    q [n, Hq, D], k/v [n, Hkv, D] are this member's rows (piece i, then piece 2k-1-i); returns
    out [n, Hq, D] in q's dtype. Every member of the ring must call it for the same ring, in the
    same (ring-id) order, with matching shapes.
    """

    @staticmethod
    def forward(ctx, q, k, v, ring: RingContext, scale: float, kernel: Kernel):  # type: ignore[override]
        slot, dt = ring.slot, acc_dtype(q.dtype)
        q_pieces = ring.member_rows[slot.position]
        out = torch.zeros(q.shape, dtype=dt, device=q.device)
        lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=dt, device=q.device)
        seen: set[int] = set()  # first row of each query piece that has a partial result yet
        kv = _local_kv(ring, k, v)
        comm = ring.kv_comm
        for step in range(slot.size):
            src = (slot.position - step) % slot.size  # member whose K/V block is in `kv`
            if step + 1 < slot.size:  # post the next transfer before computing on this block
                nxt = (src - 1) % slot.size
                # Two receive buffers in turn: the one received into now was last read at step - 1,
                # whose send completed at that step's wait.
                recv = ring.block(f"kv{step % 2}", nxt, kv)
                comm.send_recv(kv, recv, tag=TAG_KV)
                comm.commit()
            forward_block(q, q_pieces, kv, ring.member_rows[src], out, lse, seen, scale, kernel)
            if step + 1 < slot.size:
                comm.wait()
                kv = recv
        # Step 0 gave every non-empty query piece its causal diagonal, so every lse is finite.
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring, ctx.scale, ctx.kernel = ring, scale, kernel
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        ring: RingContext = ctx.ring
        slot, dt = ring.slot, acc_dtype(q.dtype)
        q_pieces = ring.member_rows[slot.position]
        kv = _local_kv(ring, k, v)
        kv_comm, grad_comm = ring.kv_comm, ring.grad_comm
        dq = torch.zeros(q.shape, dtype=dt, device=q.device)
        recv_dkv = None
        for step in range(slot.size):
            src = (slot.position - step) % slot.size
            nxt = (src - 1) % slot.size
            if step + 1 < slot.size:
                recv = ring.block(f"kv{step % 2}", nxt, kv)
                kv_comm.send_recv(kv, recv, tag=TAG_KV)
                kv_comm.commit()
            # This block's share, in one of two buffers in turn: the other may still be on its way out.
            dkv = ring.block(f"dkv{step % 2}", src, kv, dt).zero_()
            backward_block(dout, q, q_pieces, kv, ring.member_rows[src], out, lse, dq, dkv, ctx.scale, ctx.kernel)
            if step > 0:
                # Add the block's gradient from the members it visited before this one.
                grad_comm.wait()
                dkv += recv_dkv
            if step + 1 < slot.size:
                kv_comm.wait()
                kv = recv
            # Pass this block's gradient on (float32/64: no bf16 rounding per hop); receive the one
            # for the block we hold next step (origin src - 1). At the last step the block sent is
            # origin position + 1, which the next member owns, and the one received is our own, complete.
            # One receive buffer suffices: it was read (dkv += recv_dkv) before this receive is posted.
            recv_dkv = ring.block("dkv_recv", nxt, kv, dt)
            grad_comm.send_recv(dkv, recv_dkv, tag=TAG_DKV)
            grad_comm.commit()
        grad_comm.wait()
        # Copies: the buffer is reused by the next layer's backward while autograd may still hold these.
        dk, dv = recv_dkv[0].to(k.dtype, copy=True), recv_dkv[1].to(v.dtype, copy=True)
        return dq.to(q.dtype), dk, dv, None, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ring: RingContext,
                   scale: float | None = None, kernel: Kernel = "auto") -> torch.Tensor:
    """Differentiable ring attention for one ring slot; see ``RingAttention``.

    ``kernel`` picks the pair kernel (pair_kernels.py); "auto" chooses by device and dtype.
    """
    return RingAttention.apply(q, k, v, ring, check_rows(q, k, ring, scale), kernel)


def check_rows(q: torch.Tensor, k: torch.Tensor, ring: RingContext, scale: float | None) -> float:
    """Refuse q/k that are not this member's rows of the ring; returns the softmax scale to use."""
    slot = ring.slot
    if q.shape[0] != slot.num_tokens or k.shape[0] != slot.num_tokens:
        raise ValueError(f"ring {slot.ring_id}: {slot.num_tokens} local tokens but q has {q.shape[0]}, k {k.shape[0]}")
    return q.shape[-1] ** -0.5 if scale is None else scale
