"""The compute of one ring step, shared by every ring algorithm (flat, two-level, bidirectional).

A ring algorithm only decides *which* K/V block a member holds when, and how blocks and their
gradients travel; what a member does with a block it holds is always the same: attend its query
pieces to the block's visible key pieces (pair_kernels.py) and merge the partial result by
log-sum-exp (forward), or add the block's share of dQ/dK/dV given the final out/lse (backward).
"""

from __future__ import annotations

from typing import Iterator

import torch

from hdp.runtime.attention.matmul_attention import merge
from hdp.runtime.attention.pair_kernels import Kernel, pair_backward, pair_forward

Pieces = tuple[tuple[int, int, int], ...]
"""``(piece index, first row, end row)`` of a member's pieces in its own block."""


def visible_pairs(q_pieces: Pieces, k_pieces: Pieces) -> Iterator[tuple[tuple[int, int], tuple[int, int], bool]]:
    """Non-empty (query piece, key piece, causal) pairs a query can see: key piece index <= query's."""
    for jq, qa, qb in q_pieces:
        for jk, ka, kb in k_pieces:
            if qb > qa and kb > ka and jk <= jq:
                yield (qa, qb), (ka, kb), jk == jq


def forward_block(q: torch.Tensor, q_pieces: Pieces, kv: torch.Tensor, k_pieces: Pieces, out: torch.Tensor,
                  lse: torch.Tensor, seen: set[int], scale: float, kernel: Kernel) -> None:
    """Merge the attention of q [n, Hq, D] over the block kv [2, m, Hkv, D] into out/lse, in place.

    ``seen`` holds the first row of every query piece that has a partial result already; the first
    block a piece sees is stored, later ones merged (so out/lse need no -inf start values).
    """
    for (qa, qb), (ka, kb), causal in visible_pairs(q_pieces, k_pieces):
        o, l = pair_forward(q[qa:qb], kv[0, ka:kb], kv[1, ka:kb], causal, scale, kernel)
        if qa in seen:
            o, l = merge(out[qa:qb], lse[:, qa:qb], o, l)
        seen.add(qa)
        out[qa:qb], lse[:, qa:qb] = o, l


def backward_block(dout: torch.Tensor, q: torch.Tensor, q_pieces: Pieces, kv: torch.Tensor, k_pieces: Pieces,
                   out: torch.Tensor, lse: torch.Tensor, dq: torch.Tensor, dkv: torch.Tensor, scale: float,
                   kernel: Kernel) -> None:
    """Add this block's share of dq (into ``dq``) and of its dK/dV (into ``dkv`` [2, m, Hkv, D])."""
    for (qa, qb), (ka, kb), causal in visible_pairs(q_pieces, k_pieces):
        g_q, g_k, g_v = pair_backward(dout[qa:qb], q[qa:qb], kv[0, ka:kb], kv[1, ka:kb], out[qa:qb],
                                      lse[:, qa:qb], causal, scale, kernel)
        dq[qa:qb] += g_q
        dkv[0, ka:kb] += g_k
        dkv[1, ka:kb] += g_v
