"""One optimizer step of HDP training on one rank: plan check, forward/backward per micro-batch,
one gradient reduce-scatter (all-reduce with --zero 0), global norm, clip, sharded AdamW, one
parameter all-gather (``hdp.runtime.optim.zero``).

Exactness: rank r's loss is  sum(token cross-entropies on r) / (labelled tokens in the GLOBAL batch),
and gradients are summed over ranks, so the step equals single-process training on the whole global
batch (up to floating-point summation order) for any plan, any number of micro-batches per rank,
and ranks with no work at all.

With ``--tp`` the plan's ranks are the HDP ranks (``groups.mesh.hdp``; ``rank`` is this process's
HDP rank): the TP ranks of one HDP rank run the same micro-batches on their shards and compute the
same loss share, which TP index 0 alone adds to the step's (world) all-reduce.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
import torch.distributed as dist

from hdp.data.batches import GlobalBatch
from hdp.plan.types import Plan
from hdp.runtime.train.inputs import (IGNORE, MicroBatchInputs, check_batch_matches_plan, num_labelled_tokens,
                                     rank_inputs)
from hdp.runtime.model.decoder import Decoder
from hdp.runtime.model.tensor_parallel import split_dim
from hdp.runtime.offload.activations import ActivationOffloader
from hdp.runtime.parallel import groups as run_groups
from hdp.runtime.parallel.peers import collective
from hdp.runtime.parallel.plan_check import check_same_plan, check_world_size
from hdp.runtime.pipeline.executor import StageTimes, run_stage
from hdp.runtime.optim.zero import ShardedAdamW
from hdp.runtime.train.aux_loss import RouterLoss, router_loss
from hdp.runtime.train.loss import micro_batch_loss


@dataclass(frozen=True)
class StepResult:
    loss: float
    """Global per-token mean cross-entropy (same on every rank)."""
    grad_norm: float
    """Global L2 norm of the summed gradient, before clipping."""
    tokens: int
    """Tokens in the global batch."""
    local_tokens: int
    local_micro_batches: int
    finite: bool = True
    """Loss and gradient norm are finite. Every rank agrees (both come out of the same all-reduce);
    when False the update was skipped, so parameters and optimizer states are still the last finite ones."""
    maxima: tuple[int, ...] = ()
    """The maximum over ranks of each value ``train_step`` was given in ``fold`` (the plan check's all-reduce)."""
    router: dict[str, float | int | None] = field(default_factory=dict)
    """A mixture-of-experts model's router metrics (``RouterLoss.metrics``): aux/z loss, expert load."""
    pp_bubble: float | None = None
    """With ``--pp``: the stages' idle (receive-wait) seconds / their forward-backward seconds, over all processes."""


_TENSORS = ("tokens", "positions", "labels")


def to_device(mb: MicroBatchInputs, device: torch.device) -> MicroBatchInputs:
    """``mb``'s token tensors on ``device``: from pinned host memory, nonblocking (the host does not wait
    for the copy, and a pageable copy would be staged through a bounce buffer first). As is on CPU."""
    if device.type == "cpu":
        return mb
    return replace(mb, **{name: getattr(mb, name).pin_memory().to(device, non_blocking=True) for name in _TENSORS})


def forward_backward(model: Decoder, plan: Plan, batch: GlobalBatch, rank: int, device: torch.device, *,
                     timeout_s: float | None, offload: ActivationOffloader | None = None,
                     offload_layers: int | None = None, router: RouterLoss | None = None,
                     stage_times: list[StageTimes] | None = None) -> tuple[torch.Tensor, int, int]:
    """Run ``rank``'s micro-batches in plan order, accumulating gradients; returns (loss share, tokens, micro-batches).

    ``offload_layers`` overrides every micro-batch's planned ``offload_layers`` (``--offload-ratio``);
    ``router`` (default: the model's, ``aux_loss.router_loss``) sums the step's router losses.
    With ``--pp`` this process runs its stage of ``rank``'s pipeline (``pipeline.executor``, loss share on
    the last stage only) and appends its ``StageTimes`` to ``stage_times``.
    """
    denom = num_labelled_tokens(plan)
    if denom == 0:
        raise ValueError("the global batch has no token with a label (every sequence has length 1): raise --global-batch-tokens")
    loss_share = torch.zeros((), dtype=torch.float64, device=device)
    router = router if router is not None else router_loss(model, plan.total_tokens, device)
    # Built on the host, then one pinned nonblocking copy per tensor (the pinned memory is kept alive by
    # the copy until it completes: the caching host allocator records the copy's stream).
    inputs = [to_device(mb, device) for mb in rank_inputs(plan, batch, rank, torch.device("cpu"), timeout_s=timeout_s)]
    groups = run_groups.current()
    if groups.mesh.pp > 1:
        loss_share, times = run_stage(model, plan, inputs, groups.mesh, groups.coord, timeout_s=timeout_s,
                                      loss_fn=lambda mb: micro_batch_loss(model, mb, None, denom, router))
        if stage_times is not None:
            stage_times.append(times)
        return loss_share, sum(mb.num_tokens for mb in inputs), len(inputs)
    for mb in inputs:
        layers = mb.offload_layers if offload_layers is None else offload_layers
        scope = offload.micro_batch(layers) if offload else contextlib.nullcontext()
        with scope as layer_context:  # the offloaded activations must come back inside the same scope
            loss = micro_batch_loss(model, mb, layer_context, denom, router)  # chunked when T x V is large
            loss.backward()
        loss_share += loss.detach()  # stays on the device; read once, after the all-reduce
    return loss_share, sum(mb.num_tokens for mb in inputs), len(inputs)


def train_step(model: Decoder, optimizer: ShardedAdamW, plan: Plan, batch: GlobalBatch, *,
               rank: int, group: dist.ProcessGroup | None, device: torch.device, timeout_s: float | None,
               max_grad_norm: float = 1.0, offload: ActivationOffloader | None = None,
               offload_layers: int | None = None, lr: float | None = None, fold: Sequence[int] = ()) -> StepResult:
    """One step on this rank. Every rank of ``group`` must call it with the same plan and batch.

    ``fold``: integers whose maximum over ranks the caller wants (the memory figures), carried by the
    plan check's all-reduce instead of a collective and host sync of their own (``StepResult.maxima``).
    """
    world_size = dist.get_world_size(group) if dist.is_initialized() else 1
    mesh = run_groups.current().mesh
    check_world_size(plan, world_size if mesh.trivial else mesh.hdp)  # the plan's ranks are HDP ranks
    check_batch_matches_plan(plan, batch)
    maxima = tuple(fold)
    if world_size > 1:
        maxima = tuple(check_same_plan(plan, group, device, fold))  # first collective of the step
    optimizer.zero_grad()
    router = router_loss(model, plan.total_tokens, device)  # None for a dense model
    times: list[StageTimes] = []
    loss_share, local_tokens, local_mbs = forward_backward(model, plan, batch, rank, device,
                                                           timeout_s=timeout_s, offload=offload,
                                                           offload_layers=offload_layers, router=router,
                                                           stage_times=times)
    staged = [x for t in times for x in (t.wait_s, t.wait_s + t.compute_s)]  # summed over the world below
    if run_groups.current().coord.tp != 0:  # the same share as TP index 0's: counted once
        loss_share = torch.zeros_like(loss_share)
    # The only collectives of the step: the gradient reduce-scatter (+ one scalar all-reduce), then
    # step()'s parameter all-gather. A peer that died or hangs surfaces here as a PeerError.
    with collective("the gradient reduce-scatter and parameter all-gather"):
        norm, (loss, *routed) = optimizer.reduce([loss_share, *(router.scalars() if router else []), *staged])
        bubble = None
        if staged:
            (wait, busy), routed = routed[-2:], routed[:-2]
            bubble = wait / busy if busy > 0 else 0.0
        grad_norm = float(norm)
        # A NaN/Inf anywhere reaches the all-reduced norm or loss on every rank: all skip together.
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            optimizer.step(norm, max_grad_norm, lr)
    return StepResult(loss=loss, grad_norm=grad_norm, tokens=plan.total_tokens,
                      local_tokens=local_tokens, local_micro_batches=local_mbs, finite=finite, maxima=maxima,
                      router=router.metrics(routed) if router else {}, pp_bubble=bubble)


def build_optimizer(model: Decoder, lr: float, weight_decay: float = 0.1, *, zero: int = 0,
                    group: dist.ProcessGroup | None = None,
                    groups: run_groups.Groups | None = None) -> ShardedAdamW:
    """AdamW (β = 0.9, 0.95), decay on matrices only, states sharded over ``group`` for ``zero`` >= 1.

    ``groups`` with ``--tp``/``--pp``: sharded over this process's HDP pool, the norms' gradients
    all-reduced over its TP group, norm and loss summed over the world (``optim.zero``)."""
    if groups is None or groups.mesh.trivial:
        return ShardedAdamW(model, lr=lr, zero=zero, weight_decay=weight_decay, group=group)
    tp = getattr(model, "tp", None)
    replicated = frozenset(n for n, _ in model.named_parameters() if split_dim(n) is None) if tp else frozenset()
    return ShardedAdamW(model, lr=lr, zero=zero, weight_decay=weight_decay, group=groups.pool,
                        tp_group=groups.tp, tp_rank=groups.coord.tp, replicated=replicated, scalars_over_world=True)

