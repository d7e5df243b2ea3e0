"""One all-reduce per step: every gradient (and a few scalars riding along) in one flat buffer.

Summing, not averaging: each rank's loss is already divided by the number of labelled tokens of the
*global* batch, so the sum over ranks is exactly the gradient of the global per-token mean, whatever
the layout. A rank with no work contributes zeros and still takes part (it must: all-reduce is
collective). bf16 gradients are summed in float32.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def reduce_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def sync_gradients(model: nn.Module, scalars: list[torch.Tensor | float], group: dist.ProcessGroup | None
                   ) -> tuple[torch.Tensor, list[float]]:
    """Sum gradients and ``scalars`` over ranks in place; returns (global grad L2 norm, summed scalars)."""
    params = [p for p in model.parameters() if p.requires_grad]
    ref = params[0]
    dtype = reduce_dtype(ref.dtype)
    numel = sum(p.numel() for p in params)
    flat = torch.zeros(numel + len(scalars), dtype=dtype, device=ref.device)
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is not None:
            flat[offset:offset + n].copy_(p.grad.reshape(-1))
        offset += n
    for i, x in enumerate(scalars):  # tensors stay on the device: no sync before the all-reduce
        flat[numel + i] = x
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)  # a view of flat when dtypes agree
        offset += n
    # The norm of the summed gradient: identical on every rank, no second collective.
    norm = torch.linalg.vector_norm(flat[:numel])
    return norm, flat[numel:].tolist()


def clip_gradients(model: nn.Module, norm: torch.Tensor, max_norm: float) -> None:
    """Scale gradients so their global norm is at most ``max_norm`` (torch's clip_grad_norm_ rule)."""
    if max_norm <= 0:
        return
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(coef.to(p.grad.dtype))
