"""Cross-entropy of the LM head without the full [T, V] logits.

At 64K tokens and a 128K vocabulary the logits alone are 16 GiB in bf16 and ``.float()`` adds a 32
GiB copy; both are kept for backward. ``chunked_cross_entropy`` takes the last hidden states and the
head's weight instead and walks the tokens in chunks: each chunk's logits (in the model's dtype, then
float32, exactly as ``F.cross_entropy(lm_head(h).float(), ...)`` would see them) give the chunk's loss
and, in the same pass, its gradients (softmax - one-hot), so nothing of size [T, V] is ever held and
backward only scales the stored gradients by the incoming one (the loss is a scalar). Peak extra
memory: one chunk's logits and the weight's gradient (float32).

Exact: float64 gives the same loss and gradients as ``F.cross_entropy`` to rounding (the test holds
it to 1e-12); in bf16 the head's matmuls round as ``nn.Linear`` does, and the weight's gradient is
summed over chunks in float32 (cast once at the end).

Tensor parallel (``tp``): ``weight`` is this rank's vocabulary rows ``[V / tp, h]`` (rows
``rank * V/tp`` on), each chunk's logits are this rank's columns; the row maxima (MAX) and sums of
exponentials and the picked target logits (SUM) are all-reduced over the TP group, so every TP rank
gets the same loss, and the gradients are its own columns' softmax - one-hot (``hidden``'s gradient
is a partial sum the sequence-parallel all-gather's backward adds up).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import torch.distributed as dist

from hdp.runtime.model.decoder import Decoder
from hdp.runtime.model.tensor_parallel import TensorParallel
from hdp.runtime.train.aux_loss import RouterLoss
from hdp.runtime.train.inputs import IGNORE

CHUNK_ELEMENTS = 1 << 26
"""Logit elements per chunk (64M: 256 MiB in float32, ~520 tokens at a 128K vocabulary: GEMMs still
large enough to run near peak); rows per chunk = this // vocabulary."""
MIN_CHUNKED_ELEMENTS = 1 << 28
"""The train step switches to the chunked loss when T x V reaches this (256M logits: 1 GiB in float32)."""


def use_chunked(num_tokens: int, vocab_size: int) -> bool:
    """Whether [T, V] logits are large enough that the train step should not materialise them."""
    return num_tokens * vocab_size >= MIN_CHUNKED_ELEMENTS


def micro_batch_loss(model: nn.Module, mb: Any, layer_context: Any, denom: int,
                     router: RouterLoss | None = None) -> torch.Tensor:
    """Sum of ``mb``'s token cross-entropies / ``denom`` (the global batch's labelled tokens).

    The built-in ``Decoder`` with T x V past ``MIN_CHUNKED_ELEMENTS``, or tensor parallel (its logits
    are a vocabulary shard), stops before its LM head and takes the chunked loss; otherwise (and for Hugging Face models) full logits and F.cross_entropy.
    With ``router`` (a mixture-of-experts model) the router losses' gradient is added: the value
    returned stays the cross-entropy (the step's ``loss``), the router terms are summed in ``router``.
    """
    if isinstance(model, Decoder) and (model.tp is not None or use_chunked(mb.positions.shape[0], model.cfg.vocab_size)):
        hidden = model(mb.tokens, mb.positions, mb.attention, layer_context=layer_context, head=False)  # [T, h]
        ce = chunked_cross_entropy(hidden, model.lm_head.weight, mb.labels, ignore_index=IGNORE, scale=1.0 / denom,
                                   tp=model.tp)
    else:
        logits = model(mb.tokens, mb.positions, mb.attention, layer_context=layer_context)  # [T, V]
        ce = F.cross_entropy(logits.float() if logits.dtype == torch.bfloat16 else logits, mb.labels,
                             ignore_index=IGNORE, reduction="sum") / denom
    extra = router.term(model.routing, mb.attention.layout, mb.attention.rings) if router is not None else None
    # + (x - x.detach()): adds x's gradient, and exactly 0 to the value.
    return ce if extra is None else ce + (extra - extra.detach()).to(ce.dtype)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                          ignore_index: int = -100, scale: float = 1.0, chunk_rows: int | None = None,
                          tp: TensorParallel | None = None) -> torch.Tensor:
    """``scale`` x the sum over tokens of cross-entropy(hidden @ weight.T, labels) (``reduction="sum"``).

    hidden [T, h], weight [V, h] (the LM head's), labels [T] with ``ignore_index`` for unlabelled tokens.
    ``scale`` (the train step's 1 / global tokens) is applied in float32 before the gradients are cast
    to the model's dtype, as autograd does for ``F.cross_entropy(...) * scale``. Returns a float32
    scalar (float64 for float64 inputs). ``tp``: ``weight`` is this TP rank's vocabulary shard (module doc).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or labels.shape != hidden.shape[:1]:
        raise ValueError(f"chunked_cross_entropy: hidden [T, h], weight [V, h], labels [T]; got "
                         f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(labels.shape)}")
    rows = chunk_rows if chunk_rows is not None else max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _ChunkedCrossEntropy.apply(hidden, weight, labels, ignore_index, scale, rows, tp)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,  # type: ignore[override]
                ignore_index: int, scale: float, rows: int, tp: TensorParallel | None) -> torch.Tensor:
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        for start in range(0, hidden.shape[0], rows):
            h, y = hidden[start:start + rows], labels[start:start + rows]           # [t, h], [t]
            logits = F.linear(h, weight).to(acc)                                     # [t, V] (tp: [t, V/tp])
            valid = y != ignore_index
            if tp is None:
                mine, target = valid, torch.where(valid, y, 0)
                lse = torch.logsumexp(logits, dim=-1)                                # [t]
                picked = logits.gather(1, target[:, None]).squeeze(1)
            else:
                mine, target, lse, picked = _vocab_parallel(logits, y, valid, weight.shape[0], tp)
            total += torch.where(valid, lse - picked, 0).sum()
            if need_h or need_w:
                # d(sum CE)/d logits = softmax - one_hot, zero on unlabelled rows; computed in place.
                grad = logits.sub_(lse[:, None]).exp_()
                grad.scatter_add_(1, target[:, None], -mine[:, None].to(grad.dtype))
                grad.mul_(valid[:, None]).mul_(scale)
                grad = grad.to(hidden.dtype)                                         # as nn.Linear's backward sees it
                if grad_h is not None:
                    grad_h[start:start + rows] = grad @ weight
                if grad_w is not None:
                    grad_w += (grad.t() @ h).to(acc)
        ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0),
                              grad_w.to(weight.dtype) if grad_w is not None else torch.empty(0))
        ctx.has = (need_h, need_w)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        need_h, need_w = ctx.has
        g = grad_out.to(grad_h.dtype if need_h else grad_w.dtype)  # 1.0 from loss.backward(): exact
        return (grad_h * g if need_h else None, grad_w * g if need_w else None, None, None, None, None, None)


def _vocab_parallel(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, rows: int, tp: TensorParallel
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels in this shard, their local column, logsumexp over the whole vocabulary, target logit):
    three all-reduces over the TP group per chunk (max, sum of exponentials, picked logit)."""
    lo = tp.rank * rows
    mine = valid & (y >= lo) & (y < lo + rows)
    target = torch.where(mine, y - lo, 0)
    top = logits.max(dim=-1).values
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=tp.group)
    sums = (logits - top[:, None]).exp().sum(dim=-1)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=tp.group)
    picked = torch.where(mine, logits.gather(1, target[:, None]).squeeze(1), 0)
    dist.all_reduce(picked, op=dist.ReduceOp.SUM, group=tp.group)
    return mine, target, top + sums.log(), picked
