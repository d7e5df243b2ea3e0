"""Two-level (node-aware) ring attention: an inner ring inside each node, g parallel outer rings across nodes.

The ring's positions form an m x g node grid (ring_select.node_grid): member (a, b) is the b-th
member on the a-th node. In round t = 0..m-1 member (a, b) starts from the *outer block* that
originated at (a - t, b) and rotates it around its node: at inner step u it holds the block of
(a - t, b - u), sending it to (a, b + 1) while computing. Meanwhile the outer transfer of the round
is in flight: the outer block goes to (a + 1, b), the same local index on the next node, and the
one of (a - t - 1, b) arrives from (a - 1, b) for the next round. So all g members of a node send
across nodes at once (every NIC busy, not one), and each outer transfer has g inner blocks of
compute to hide under. Over m rounds of g steps every member sees all m*g blocks exactly once;
which pairs of pieces are visible follows from the pieces' global order (ring_blocks.py), so the
grid order needs no relation to the zig-zag positions.

Backward, the gradient follows its block as in the flat ring, at both levels: within a round a
block's dK/dV buffer trails it one inner step behind and, after g steps, is back at the member that
held the block as its outer block, summed over the node. That node share plus the shares of the
nodes the block visited before (received over the outer link during the round) goes to (a + 1, b)
during the next round. After round m - 1 the sum reaches (a + 1, b), whose own block it is: the
block's origin receives its complete dK/dV, as in the flat ring.

No deadlock (docs/attention.md): every member runs the same sequence of posts and waits; each
transfer's send and receive are posted together, nonblocking, before any wait of the same point in
the sequence, and every wait (inner: same step; outer: posted a round earlier) is for ops every
peer posts at that point or before. By induction over the sequence, no member waits for an op that
its peer has not posted. Four streams (inner/outer x K/V and dK/dV) carry distinct tags, and on each
pair of ranks both ends post them in the same order. Inner and outer peers are different ranks
(same node vs another node).
"""

from __future__ import annotations

import torch

from hdp.runtime.attention.matmul_attention import acc_dtype
from hdp.runtime.attention.pair_kernels import Kernel
from hdp.runtime.attention.ring.flat import TAG_DKV, TAG_KV, RingContext, _local_kv, check_rows
from hdp.runtime.attention.ring.blocks import backward_block, forward_block

TAG_KV_OUTER = 13
TAG_DKV_OUTER = 14


class _Grid:
    """This member's place (a, b) in its ring's node grid, and who sits where."""

    def __init__(self, ring: RingContext) -> None:
        if ring.grid is None:
            raise ValueError(f"ring {ring.slot.ring_id} is not node-aligned: it cannot run two-level")
        self.grid, self.ranks = ring.grid, ring.slot.ranks
        self.m, self.g = len(self.grid), len(self.grid[0])
        self.a, self.b = next((a, row.index(ring.slot.position)) for a, row in enumerate(self.grid)
                              if ring.slot.position in row)

    def origin(self, a: int, b: int) -> int:
        """Ring position of the member at grid cell (a, b), wrapping around both levels."""
        return self.grid[a % self.m][b % self.g]

    def rank(self, a: int, b: int) -> int:
        return self.ranks[self.origin(a, b)]

    def inner_peers(self) -> tuple[int, int]:
        return self.rank(self.a, self.b + 1), self.rank(self.a, self.b - 1)

    def outer_peers(self) -> tuple[int, int]:
        return self.rank(self.a + 1, self.b), self.rank(self.a - 1, self.b)


def _post_outer(ring: RingContext, grid: _Grid, t: int, kv_o: torch.Tensor) -> torch.Tensor | None:
    """Post round t's outer K/V transfer (none in the last round); returns the receive buffer."""
    if t + 1 >= grid.m:
        return None
    recv = ring.block(f"2l.kvo{(t + 1) % 2}", grid.origin(grid.a - t - 1, grid.b), kv_o)
    comm = ring.comm("2l.kv_outer")
    dst, src = grid.outer_peers()
    comm.exchange(kv_o, dst, recv, src, tag=TAG_KV_OUTER)
    comm.commit()
    return recv


def _post_inner(ring: RingContext, grid: _Grid, t: int, u: int, cur: torch.Tensor) -> torch.Tensor:
    """Post inner step u's K/V transfer to the next member of the node; returns the receive buffer."""
    # Two receive buffers in turn, as in ring.py: the one received into was last read at step u - 1.
    recv = ring.block(f"2l.kvi{u % 2}", grid.origin(grid.a - t, grid.b - u - 1), cur)
    comm = ring.comm("2l.kv_inner")
    dst, src = grid.inner_peers()
    comm.exchange(cur, dst, recv, src, tag=TAG_KV)
    comm.commit()
    return recv


class TwoLevelRingAttention(torch.autograd.Function):
    """Same contract as ``ring.RingAttention``, for a node-aligned ring."""

    @staticmethod
    def forward(ctx, q, k, v, ring: RingContext, scale: float, kernel: Kernel):  # type: ignore[override]
        grid, dt = _Grid(ring), acc_dtype(q.dtype)
        q_pieces = ring.member_rows[ring.slot.position]
        out = torch.zeros(q.shape, dtype=dt, device=q.device)
        lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=dt, device=q.device)
        seen: set[int] = set()
        kv_o = _local_kv(ring, k, v)  # round 0's outer block is this member's own
        for t in range(grid.m):
            recv_o = _post_outer(ring, grid, t, kv_o)
            cur = kv_o
            for u in range(grid.g):
                recv = _post_inner(ring, grid, t, u, cur) if u + 1 < grid.g else None
                src = grid.origin(grid.a - t, grid.b - u)
                forward_block(q, q_pieces, cur, ring.member_rows[src], out, lse, seen, scale, kernel)
                if recv is not None:
                    ring.comm("2l.kv_inner").wait()
                    cur = recv
            if recv_o is not None:
                ring.comm("2l.kv_outer").wait()
                kv_o = recv_o
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring, ctx.scale, ctx.kernel = ring, scale, kernel
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        ring: RingContext = ctx.ring
        grid, dt = _Grid(ring), acc_dtype(q.dtype)
        q_pieces = ring.member_rows[ring.slot.position]
        g_inner, g_outer = ring.comm("2l.dkv_inner"), ring.comm("2l.dkv_outer")
        dq = torch.zeros(q.shape, dtype=dt, device=q.device)
        kv_o = _local_kv(ring, k, v)
        recv_go: torch.Tensor | None = None  # outer dK/dV arriving for the next round's outer block
        recv_gi = dq  # inner dK/dV arriving (set at every inner step before it is read at the next)
        for t in range(grid.m):
            recv_o = _post_outer(ring, grid, t, kv_o)
            cur = kv_o
            for u in range(grid.g):
                src, nxt = grid.origin(grid.a - t, grid.b - u), grid.origin(grid.a - t, grid.b - u - 1)
                recv = _post_inner(ring, grid, t, u, cur) if u + 1 < grid.g else None
                dkv = ring.block(f"2l.dkvi{u % 2}", src, cur, dt).zero_()
                backward_block(dout, q, q_pieces, cur, ring.member_rows[src], out, lse, dq, dkv, ctx.scale,
                               ctx.kernel)
                if u > 0:  # the node's earlier members' shares of this block
                    g_inner.wait()
                    dkv += recv_gi
                if recv is not None:
                    ring.comm("2l.kv_inner").wait()
                    cur = recv
                # Pass it on behind the block; after the round's last step the receive is the node's
                # whole share of this round's outer block (one buffer: read before it is posted again).
                recv_gi = ring.block("2l.dkvi_recv", nxt, cur, dt)
                dst, from_ = grid.inner_peers()
                g_inner.exchange(dkv, dst, recv_gi, from_, tag=TAG_DKV)
                g_inner.commit()
            g_inner.wait()
            # The outer block's gradient so far: this node's share plus the earlier nodes' (posted a
            # round ago, so its transfer had this whole round to complete); on to the next node.
            send_go = ring.block("2l.dkvo_send", grid.origin(grid.a - t, grid.b), kv_o, dt)
            if recv_go is None:
                send_go.copy_(recv_gi)
            else:
                g_outer.wait()
                torch.add(recv_gi, recv_go, out=send_go)
            recv_go = ring.block("2l.dkvo_recv", grid.origin(grid.a - t - 1, grid.b), kv_o, dt)
            dst, from_ = grid.outer_peers()
            g_outer.exchange(send_go, dst, recv_go, from_, tag=TAG_DKV_OUTER)
            g_outer.commit()
            if recv_o is not None:
                ring.comm("2l.kv_outer").wait()
                kv_o = recv_o
        g_outer.wait()  # the last outer receive is this member's own block, complete
        assert recv_go is not None
        dk, dv = recv_go[0].to(k.dtype, copy=True), recv_go[1].to(v.dtype, copy=True)
        return dq.to(q.dtype), dk, dv, None, None, None


def two_level_ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ring: RingContext,
                             scale: float | None = None, kernel: Kernel = "auto") -> torch.Tensor:
    """Differentiable two-level ring attention for one node-aligned ring slot."""
    return TwoLevelRingAttention.apply(q, k, v, ring, check_rows(q, k, ring, scale), kernel)
