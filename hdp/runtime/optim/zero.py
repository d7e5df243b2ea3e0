"""Sharded AdamW over the whole HDP pool (ZeRO 0/1/2) on flat buffers: one reduce-scatter of
gradients and one all-gather of parameters per step, whatever the number of micro-batches per rank.

Why not FSDP2 or ZeroRedundancyOptimizer: FSDP2 issues its collectives inside every forward and
backward (HDP ranks run different numbers of micro-batches, so per-micro-batch collectives would
pair up wrongly or hang), and ZeroRedundancyOptimizer shards only the optimizer state with an
owner broadcast. This is Megatron's distributed-optimizer pattern:

* every parameter becomes a view of one flat compute-dtype buffer (matrices first, then the 1-D
  norm gains, so weight decay is one prefix of the buffer), padded to a multiple of the world size;
  rank r owns the slice ``[r*S, (r+1)*S)``;
* gradients of all of the step's micro-batches accumulate into one flat buffer in the master dtype
  (a post-accumulate hook adds each parameter's gradient and drops it), so bf16 gradients are summed
  in fp32;
* ``step``: reduce-scatter the buffer in place (zero 0: all-reduce), the global gradient norm from
  the shards' sums of squares in one scalar all-reduce (the loss rides along), clip, AdamW on the
  shard (fp32 master weights for bf16), all-gather the updated parameters in place.

With ``--tp``/``--pp`` (``hdp.runtime.parallel.mesh``) ``group`` is this process's HDP pool and the
buffers hold its own shards of the model. Parameters replicated over the TP group (the norms) get
*partial* gradients under sequence parallelism (each TP rank saw its own rows): they sit in one
contiguous region of the buffer (sharded matrices, replicated matrices, replicated vectors, sharded
vectors: decay stays a prefix), all-reduced over ``tp_group`` in one call before the pool's
reduce-scatter. The norm and the scalars are then summed over the *world* (``scalars_over_world``),
each replicated element counted by TP index 0 only (and, with zero 0, each element by pool rank 0).

A rank with no micro-batch contributes zeros and still takes part. The shards (``master``,
``exp_avg``, ``exp_avg_sq``: ``S`` elements each, at offset ``r*S`` of a global flat tensor of
``Np`` elements; ``layout`` maps names to offsets) are what torch.distributed.checkpoint can save as
a 1-D sharded tensor. Byte counts follow ``hdp.plan.cost.memory.state_bytes`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from hdp.plan.cost.memory import padded_numel
from hdp.runtime.optim.precision import Precision


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one parameter lives in the flat buffers."""

    name: str
    offset: int
    numel: int
    shape: tuple[int, ...]


class ShardedAdamW:
    """AdamW (decoupled decay on matrices only) whose states are sharded over ``group`` (``zero`` 0, 1 or 2)."""

    def __init__(self, model: nn.Module, *, lr: float, zero: int = 1, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 group: dist.ProcessGroup | None = None, tp_group: dist.ProcessGroup | None = None,
                 tp_rank: int = 0, replicated: frozenset[str] = frozenset(), scalars_over_world: bool = False) -> None:
        if zero not in (0, 1, 2):
            raise ValueError(f"--zero must be 0, 1 or 2, got {zero!r}")
        self.zero, self.lr, self.weight_decay, self.betas, self.eps, self.group = zero, lr, weight_decay, betas, eps, group
        self.tp_group, self.tp_rank, self.scalars_over_world = tp_group, tp_rank, scalars_over_world
        self.world_size = dist.get_world_size(group) if dist.is_initialized() else 1
        self.rank = dist.get_rank(group) if dist.is_initialized() else 0
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        rep = (lambda name: name in replicated) if tp_group is not None else (lambda name: False)
        ordered = ([x for x in named if x[1].ndim >= 2 and not rep(x[0])] + [x for x in named if x[1].ndim >= 2 and rep(x[0])]
                   + [x for x in named if x[1].ndim < 2 and rep(x[0])] + [x for x in named if x[1].ndim < 2 and not rep(x[0])])
        first = ordered[0][1]
        self.precision = Precision.for_dtype(first.dtype)
        self.device = first.device
        self.numel = sum(p.numel() for _, p in ordered)
        self.decay_numel = sum(p.numel() for _, p in ordered if p.ndim >= 2)
        start = sum(p.numel() for n, p in ordered if p.ndim >= 2 and not rep(n))
        self.replicated_range = (start, start + sum(p.numel() for n, p in ordered if rep(n)))
        """Flat range of the TP-replicated parameters (empty without a TP group)."""
        self.padded_numel = padded_numel(self.numel, self.world_size, zero)
        shard = self.padded_numel // self.world_size if zero >= 1 else self.padded_numel
        self.shard_range = (self.rank * shard, self.rank * shard + shard) if zero >= 1 else (0, shard)

        self.flat_param = torch.zeros(self.padded_numel, dtype=self.precision.compute, device=self.device)
        entries, offset = [], 0
        for name, p in ordered:
            n = p.numel()
            self.flat_param[offset:offset + n].copy_(p.detach().reshape(-1))
            p.data = self.flat_param[offset:offset + n].view_as(p)  # the model now reads the flat buffer
            entries.append(Entry(name, offset, n, tuple(p.shape)))
            p.register_post_accumulate_grad_hook(self._accumulate_hook(offset, n))
            offset += n
        self.layout: tuple[Entry, ...] = tuple(entries)
        self.params = [p for _, p in ordered]

        lo, hi = self.shard_range
        main = self.precision.master
        # Pure dtypes update their own parameter shard in place; bf16 keeps an fp32 master copy.
        self.master = (self.flat_param[lo:hi].to(main).clone() if self.precision.mixed
                       else self.flat_param[lo:hi])
        self.exp_avg = torch.zeros(hi - lo, dtype=main, device=self.device)
        self.exp_avg_sq = torch.zeros(hi - lo, dtype=main, device=self.device)
        self.num_steps = 0
        self.grad_buffer: torch.Tensor | None = None
        self.grad_shard: torch.Tensor | None = None
        """This rank's slice of the reduced (and clipped) gradient after ``step``; the full buffer with zero 0."""
        if zero < 2:
            self.grad_buffer = torch.zeros(self.padded_numel, dtype=main, device=self.device)

    # -- gradients -----------------------------------------------------------------------------------
    def _accumulate_hook(self, offset: int, n: int):
        def hook(p: torch.Tensor) -> None:
            assert self.grad_buffer is not None, "backward outside a step: call zero_grad() first"
            self.grad_buffer[offset:offset + n].add_(p.grad.reshape(-1))
            p.grad = None  # the flat buffer holds it; no second copy per parameter
        return hook

    def zero_grad(self) -> None:
        """Start a step: an empty gradient buffer (zero 2 allocates it now and frees it after ``step``)."""
        for p in self.params:
            p.grad = None
        if self.grad_buffer is None:
            self.grad_shard = None
            self.grad_buffer = torch.zeros(self.padded_numel, dtype=self.precision.master, device=self.device)
        else:
            self.grad_buffer.zero_()

    def _distributed(self) -> bool:
        return dist.is_initialized() and self.world_size > 1

    def reduce(self, scalars: list[torch.Tensor | float]) -> tuple[torch.Tensor, list[float]]:
        """Sum gradients over ranks into this rank's shard; returns (global grad norm, summed scalars)."""
        assert self.grad_buffer is not None, "reduce() needs zero_grad() and a backward first"
        lo, hi = self.shard_range
        buf = self.grad_buffer
        r0, r1 = self.replicated_range
        if self.tp_group is not None and r1 > r0:  # partial (sequence-parallel) gradients of the norms
            dist.all_reduce(buf[r0:r1], op=dist.ReduceOp.SUM, group=self.tp_group)
        if self._distributed():
            if self.zero == 0:
                dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
            else:
                dist.reduce_scatter_single(buf[lo:hi], buf, op=dist.ReduceOp.SUM, group=self.group)
        shard = buf[lo:hi]
        # One small all-reduce: the shard's sum of squares (zero >= 1) and the scalars (the loss).
        local = torch.zeros(1 + len(scalars), dtype=torch.float64, device=self.device)
        world = self.scalars_over_world and dist.is_initialized()
        if self.zero >= 1 or (world and self.rank == 0):
            local[0] = self._sumsq(shard, lo)
        for i, x in enumerate(scalars):
            local[1 + i] = x
        if world:
            dist.all_reduce(local, op=dist.ReduceOp.SUM)
        elif self._distributed():
            dist.all_reduce(local, op=dist.ReduceOp.SUM, group=self.group)
        sumsq = local[0] if self.zero >= 1 or world else torch.linalg.vector_norm(shard).double() ** 2
        if self.zero == 2:
            self.grad_shard = shard.clone()
            self.grad_buffer = None  # between steps only the reduced shard stays
        else:
            self.grad_shard = shard
        return sumsq.sqrt(), local[1:].tolist()

    def _sumsq(self, shard: torch.Tensor, lo: int) -> torch.Tensor:
        """Sum of squares of ``shard`` (flat offset ``lo``), TP-replicated elements counted on TP index 0 only."""
        r0, r1 = (max(0, x - lo) for x in self.replicated_range)
        r0, r1 = min(r0, shard.numel()), min(r1, shard.numel())
        if self.tp_rank == 0 or r1 == r0:
            return torch.linalg.vector_norm(shard).double() ** 2
        return torch.linalg.vector_norm(shard[:r0]).double() ** 2 + torch.linalg.vector_norm(shard[r1:]).double() ** 2

    # -- update --------------------------------------------------------------------------------------
    def step(self, norm: torch.Tensor, max_grad_norm: float, lr: float | None = None) -> None:
        """Clip by the global ``norm`` (torch's clip_grad_norm_ rule), AdamW on the shard, all-gather."""
        assert self.grad_shard is not None, "step() needs reduce() first"
        grad = self.grad_shard
        if max_grad_norm > 0:
            grad.mul_(torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0).to(grad.dtype))
        lr = self.lr if lr is None else lr
        self.num_steps += 1
        lo, hi = self.shard_range
        decay = max(0, min(hi, self.decay_numel) - lo)
        if decay and self.weight_decay:
            self.master[:decay].mul_(1 - lr * self.weight_decay)
        beta1, beta2 = self.betas
        # The arithmetic of torch.optim.AdamW (foreach=False), on one flat shard.
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1 ** self.num_steps)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** self.num_steps)).add_(self.eps)
        self.master.addcdiv_(self.exp_avg, denom, value=-step_size)
        if self.precision.mixed:
            self.flat_param[lo:hi].copy_(self.master)
        if self._distributed() and self.zero >= 1:
            dist.all_gather_single(self.flat_param, self.flat_param[lo:hi], group=self.group)

    # -- memory --------------------------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes of the distinct storages this rank holds for parameters, gradients and optimizer states."""
        tensors = [*self.params, self.grad_buffer, self.grad_shard, self.master, self.exp_avg, self.exp_avg_sq]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}
        return sum(storages.values())
