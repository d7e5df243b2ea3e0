"""Megatron tensor parallelism with sequence parallelism on one TP group, as plain autograd functions.

Why not DTensor's ``parallelize_module``: our micro-batches are packed buffers of *uneven* length
``T`` (whatever the plan put there), and its sequence-parallel styles shard the token dimension
with ``Shard(0)``/``reduce_scatter`` on equal chunks; every layer would need ``use_local_output``
juggling and padding anyway, and its redistribution rules hide which collective runs where. Four
small functions below say exactly that, and keep every collective in a fixed order on every TP rank.

Layout per TP rank (``TensorParallel.size = tp`` ranks, index ``rank``):

* the residual stream and the norms hold ``[Tp / tp, h]`` rows, ``Tp = T`` padded up to a multiple
  of ``tp`` (``padded_rows``): ``reduce_scatter`` needs equal chunks, and ``T`` is anything. The
  padded rows are zero on entry (``scatter_sequence`` pads the partial sums with zeros), stay zero
  through the residual adds and RMSNorm (0 * rsqrt(eps) = 0), and are cut off by every
  ``gather_sequence`` before a linear or the loss sees them, so they never reach the loss and get
  zero gradient;
* before a column-parallel linear (q/k/v, gate/up: contiguous row blocks of the weight, so whole
  heads) ``gather_sequence`` all-gathers the tokens (backward: reduce-scatter); after a row-parallel
  one (o_proj, down_proj: column blocks) ``scatter_sequence`` reduce-scatters the partial sums
  (backward: all-gather);
* the embedding and LM head are vocab-parallel (row blocks of ``[V, h]``); the loss is the
  vocab-parallel cross-entropy of ``hdp.runtime.train.loss`` (max and sum-exp all-reduced).

``copy_to_region``/``reduce_from_region`` are Megatron's non-sequence-parallel pair (identity one
way, all-reduce the other), for a region whose input is replicated rather than token-split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hdp.plan.cost.model_config import ModelConfig


@dataclass(frozen=True)
class TensorParallel:
    """This process's TP group: ``size`` ranks, this one at ``rank``."""

    size: int
    rank: int
    group: Any = None
    """The TP ``ProcessGroup`` (``None``: the default group, e.g. a test with only TP ranks)."""


def check_tp(cfg: ModelConfig, tp: int, name: str) -> None:
    """One-line refusal of a model that ``tp`` ranks cannot split (raised before any process starts)."""
    if tp == 1:
        return
    if cfg.is_moe:
        raise ValueError(f"--tp {tp}: model {name} is a mixture of experts; tensor parallelism runs dense models only for now")
    for what, n in (("num_heads", cfg.num_heads), ("num_kv_heads", cfg.num_kv_heads), ("ffn_size", cfg.ffn_size),
                    ("vocab_size", cfg.vocab_size)):
        if n % tp:
            raise ValueError(f"--tp {tp}: model {name} has {what} {n}, not a multiple of {tp}")


SPLIT_DIM = {"embed_tokens.weight": 0, "lm_head.weight": 0, "q_proj.weight": 0, "k_proj.weight": 0,
             "v_proj.weight": 0, "gate_proj.weight": 0, "up_proj.weight": 0, "o_proj.weight": 1,
             "down_proj.weight": 1, "q_proj.bias": 0, "k_proj.bias": 0, "v_proj.bias": 0}
"""Which dimension of each (HF-named) parameter TP splits: 0 column-parallel / vocab rows, 1 row-parallel
(the biases: Qwen2's q/k/v, column-parallel, with ``--hf-model``)."""


def split_dim(name: str) -> int | None:
    """The split dimension of parameter ``name``; None: replicated on every TP rank (the norms)."""
    for suffix, dim in SPLIT_DIM.items():
        if name == suffix or name.endswith("." + suffix):
            return dim
    return None


def full_shape(name: str, shape: tuple[int, ...], tp: int) -> tuple[int, ...]:
    """The single-process shape of a parameter whose TP shard has ``shape``."""
    dim = split_dim(name)
    if dim is None or tp == 1:
        return tuple(shape)
    return tuple(n * tp if i == dim else n for i, n in enumerate(shape))


def copy_shard_chunk(dst: torch.Tensor, values: torch.Tensor, a: int, name: str, tp: int, rank: int) -> None:
    """Write into shard ``dst`` the elements of ``values`` = flat [a, a + len) of the *full* tensor
    that belong to TP ``rank``'s slice (init: the full parameter is drawn chunk by chunk)."""
    dim = split_dim(name) if tp > 1 else None
    flat, b = dst.view(-1), a + values.numel()
    if dim is None:
        flat[a:b].copy_(values)
        return
    if dim == 0:  # a contiguous block of rows: flat [lo, hi) of the full tensor
        lo = rank * dst.numel()
        s, e = max(a, lo), min(b, lo + dst.numel())
        if s < e:
            flat[s - lo:e - lo].copy_(values[s - a:e - a])
        return
    rows, cols = dst.shape
    width = cols * tp
    c0 = rank * cols
    for i in range(a // width, min(rows, -(-b // width))):  # rows the chunk touches (full row i)
        s, e = max(a, i * width + c0), min(b, i * width + c0 + cols)
        if s < e:
            dst[i, s - i * width - c0:e - i * width - c0].copy_(values[s - a:e - a])


def padded_rows(t: int, tp: int) -> int:
    """``t`` rounded up to a multiple of ``tp`` (module docstring: why the sequence region is padded)."""
    return -(-t // tp) * tp


def _pad(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    return torch.cat((x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))))


def _all_gather_rows(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    out = x.new_empty((x.shape[0] * tp.size, *x.shape[1:]))
    dist.all_gather_single(out, x.contiguous(), group=tp.group)
    return out


def _reduce_scatter_rows(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    out = x.new_empty((x.shape[0] // tp.size, *x.shape[1:]))
    dist.reduce_scatter_single(out, x.contiguous(), op=dist.ReduceOp.SUM, group=tp.group)
    return out


def _all_reduce(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=tp.group)
    return x


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TensorParallel, t: int) -> torch.Tensor:  # type: ignore[override]
        ctx.tp = tp
        return _all_gather_rows(x, tp)[:t]

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        tp = ctx.tp
        return _reduce_scatter_rows(_pad(g, padded_rows(g.shape[0], tp.size)), tp), None, None


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:  # type: ignore[override]
        ctx.tp, ctx.t = tp, x.shape[0]
        return _reduce_scatter_rows(_pad(x, padded_rows(x.shape[0], tp.size)), tp)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return _all_gather_rows(g, ctx.tp)[:ctx.t], None


class _Copy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:  # type: ignore[override]
        ctx.tp = tp
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return _all_reduce(g, ctx.tp), None


class _Reduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:  # type: ignore[override]
        return _all_reduce(x, tp)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g, None


def gather_sequence(x: torch.Tensor, tp: TensorParallel, t: int) -> torch.Tensor:
    """[Tp/tp, h] per rank -> the whole [t, h] on every rank (backward: pad, reduce-scatter)."""
    return _Gather.apply(x, tp, t)


def scatter_sequence(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Partial sums [t, h] on every rank -> this rank's rows [Tp/tp, h] of their sum (backward: all-gather, cut)."""
    return _Scatter.apply(x, tp)


def copy_to_region(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Identity forward; backward all-reduces the gradient over the TP group."""
    return _Copy.apply(x, tp)


def reduce_from_region(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """All-reduce forward; identity backward."""
    return _Reduce.apply(x, tp)


def vocab_embedding(tokens: torch.Tensor, weight: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """This rank's partial embedding [T, h]: its vocabulary rows' vectors, zero for other tokens
    (``scatter_sequence`` sums them: exactly one rank contributes each token)."""
    lo = tp.rank * weight.shape[0]
    mine = (tokens >= lo) & (tokens < lo + weight.shape[0])
    return F.embedding(torch.where(mine, tokens - lo, 0), weight) * mine[:, None].to(weight.dtype)


def gather_parameters(named: list[tuple[str, torch.Tensor]], tp: TensorParallel) -> dict[str, torch.Tensor]:
    """The single-process tensors of TP-sharded parameters (all-gathered along their split dimension;
    replicated ones as they are). Collective: every TP rank calls it with the same names."""
    full = {}
    for name, p in named:
        dim = split_dim(name)
        if dim is None or tp.size == 1:
            full[name] = p.detach().clone()
            continue
        parts = [torch.empty_like(p) for _ in range(tp.size)]
        dist.all_gather(parts, p.detach().contiguous(), group=tp.group)
        full[name] = torch.cat(parts, dim=dim)
    return full
