"""Exact attention on one (query block, key block) pair, forward and backward, with log-sum-exp.

The building block of ring attention: queries and keys carry their *global* positions and the
causal mask is ``q_pos >= k_pos``, so any pair of zig-zag pieces (of any length, including zero)
is handled by one rule. Plain matmuls in the accumulation dtype: exact, any device, and the
reference the faster kernels are checked against.

Shapes: q [Nq, Hq, D], k/v [Nk, Hkv, D], lse [Hq, Nq]. GQA: query head h reads kv head
h // (Hq // Hkv); kv heads are expanded only inside these functions.
"""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in float32, or float64 when the model runs float64 (bf16 merges drift otherwise)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def expand_kv(x: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    """[N, Hkv, D] -> [N, Hq, D], kv head j serving query heads j*G .. j*G+G-1."""
    group = num_q_heads // x.shape[1]
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def reduce_kv(x: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Inverse of ``expand_kv`` for gradients: sum each group of query heads into its kv head."""
    n, hq, d = x.shape
    return x if hq == num_kv_heads else x.view(n, num_kv_heads, hq // num_kv_heads, d).sum(dim=2)


def _scores(q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, scale: float) -> torch.Tensor:
    # [Hq, Nq, Nk], masked entries -inf
    s = torch.einsum("qhd,khd->hqk", q, expand_kv(k, q.shape[1])) * scale
    return s.masked_fill((q_pos[:, None] < k_pos[None, :])[None], float("-inf"))


def block_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [Nq, Hq, D], lse [Hq, Nq])`` in the accumulation dtype.

    A query row with no visible key gets out 0 and lse -inf, which the LSE merge treats as an
    empty contribution.
    """
    dt = acc_dtype(q.dtype)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    s = _scores(q, k, q_pos, k_pos, scale)
    lse = torch.logsumexp(s, dim=-1)  # [Hq, Nq]
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])  # masked entries -> 0
    out = torch.einsum("hqk,khd->qhd", p, expand_kv(v, q.shape[1]))
    return out, lse


def block_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of this block's share of the *final* output, in the accumulation dtype.

    With the final (merged) ``out`` and ``lse`` of the query rows, the block's probabilities are
    exactly ``P = exp(S - lse)`` and ``dS = P * (dP - rowsum(dout * out))`` (the flash-attention
    backward); summing block gradients over all key blocks gives the full gradients.
    dk, dv are returned per kv head ([Nk, Hkv, D]).
    """
    dt = acc_dtype(q.dtype)
    q, k, v, dout, out = q.to(dt), k.to(dt), v.to(dt), dout.to(dt), out.to(dt)
    hq, hkv = q.shape[1], k.shape[1]
    s = _scores(q, k, q_pos, k_pos, scale)
    p = torch.exp(s - lse[..., None])  # [Hq, Nq, Nk]
    v_exp = expand_kv(v, hq)
    dv = torch.einsum("hqk,qhd->khd", p, dout)
    dp = torch.einsum("qhd,khd->hqk", dout, v_exp)
    delta = (dout * out).sum(dim=-1).transpose(0, 1)  # [Hq, Nq]
    ds = p * (dp - delta[..., None]) * scale
    dq = torch.einsum("hqk,khd->qhd", ds, expand_kv(k, hq))
    dk = torch.einsum("hqk,qhd->khd", ds, q)
    return dq, reduce_kv(dk, hkv), reduce_kv(dv, hkv)


def merge(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial softmax-attention results over disjoint key sets.

    With ``lse_a = log Σ_a exp(s)`` and ``out_a = Σ_a exp(s - lse_a) v``, the result over a ∪ b is
    ``lse = log(exp(lse_a) + exp(lse_b))`` and ``out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b``.
    ``logaddexp`` keeps it finite, and an empty side (lse = -inf) contributes weight 0. ``out`` and
    ``lse`` must already be finite (every query sees at least itself in its own block).
    """
    new_lse = torch.logaddexp(lse, block_lse)
    w_old = torch.exp(lse - new_lse).transpose(0, 1)[..., None]  # [Nq, Hq, 1]
    w_new = torch.exp(block_lse - new_lse).transpose(0, 1)[..., None]
    return out * w_old + block_out * w_new, new_lse
