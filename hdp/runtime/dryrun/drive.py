"""One real step of every rank, one rank after another, in this process: the recorded ops per rank.

Each rank joins torch's fake process group as itself (``init_process_group("fake")``: any world size,
no communication, collectives and P2P accepted as on a real group), with the run's extra groups
(``parallel.groups``: the second P2P group, the host group), and calls the same ``train_step`` a
worker calls, on the same plan, on ``meta`` tensors (shapes and dtypes, no memory: llama-7b's
parameters cost nothing). Around it: the recorder (``record``), the host-sync counter and the ring
phases (``rings``). What differs from a worker: no offloading to the host (it moves nothing between
ranks); the model and its optimizer are built once (every rank's buffers have the same sizes); a
rank with no micro-batch reuses the first such rank's ops; by default the model is the
``skeleton`` (every call that communicates, nothing else) running ``layers`` of its layers, with the
ring blocks' arithmetic skipped; ``full=True`` runs the real model and its arithmetic.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch
import torch.distributed as dist

from hdp.plan.types import Plan
from hdp.runtime.config import TrainConfig
from hdp.runtime.dryrun.record import HostSyncs, Op, Recorder
from hdp.runtime.dryrun.rings import RingRecorder, Templates
from hdp.runtime.dryrun.skeleton import AttentionSkeleton, compute_skipped, fast_meta_adds
from hdp.plan.cost.model_config import get_model
from hdp.runtime.model.decoder import Decoder
from hdp.runtime.parallel import groups as run_groups
from hdp.runtime.train.step import build_optimizer, train_step

try:  # the fake process group registers itself on import (a testing module in torch 2.13)
    from torch.testing._internal.distributed.fake_pg import FakeStore
except ImportError:  # pragma: no cover - its public successor, should it move
    from torch.distributed._tools.fake_collectives import FakeStore  # type: ignore[no-redef]


@dataclass(frozen=True)
class SyntheticBatch:
    """A global batch of given lengths whose tokens are all 0 (``GlobalBatch``'s interface for the step)."""

    lengths: list[int]

    def read(self, seq: int, start: int, end: int) -> Sequence[int]:
        if not 0 <= start <= end <= self.lengths[seq]:
            raise ValueError(f"tokens [{start}, {end}) are outside sequence {seq} of length {self.lengths[seq]}")
        return [0] * (end - start)


@dataclass
class Recorded:
    """Every rank's ops for one step, their host syncs, and the ring templates the ops refer to."""

    plan: Plan
    ops: list[list[Op]]
    host_syncs: list[int]
    templates: Templates
    layers_run: int
    """Decoder layers whose attention ran (ring traffic of the others is the same: ``report`` scales it)."""
    ring_buffers: dict[tuple[int, int, int], int] = field(default_factory=dict)
    """(rank, micro-batch, ring id) -> bytes of that ring's transfer buffers (``RingContext.block``)."""
    wall_s: float = 0.0


def _fake_model(config: TrainConfig) -> Decoder:
    """The preset's decoder with parameters in the run's dtype (under ``torch.device("meta")``: no memory).

    Built here rather than by ``build_train_model``: its seeded init runs on real host storage
    (28 GB for llama-7b in fp32), and no value is ever read.
    """
    if config.hf_model is not None:
        raise ValueError("--dry-run runs the built-in --model presets; a --hf-model is not supported yet")
    decoder = Decoder(get_model(config.model), recompute=config.recompute == "full")
    for p in decoder.parameters():
        p.data = p.data.to(config.torch_dtype)
    return decoder


@contextlib.contextmanager
def _fingerprint_once(plan: Plan) -> Iterator[None]:
    """``plan.fingerprint`` hashed once, not once per rank (every rank here holds this very plan object).

    A worker hashes its own plan (the plan check compares the hashes); here all ranks share one
    object, so every rank's hash is this one. Hashing llama-7b's 1,024-rank plan costs ~60 ms, a
    minute over a busy world. Other plans (none in a step) still hash as before.
    """
    prop = Plan.__dict__["fingerprint"]
    digest = prop.fget(plan)
    Plan.fingerprint = property(lambda p: digest if p is plan else prop.fget(p))  # type: ignore[method-assign]
    try:
        yield
    finally:
        Plan.fingerprint = prop  # type: ignore[method-assign]


def _join(rank: int, world_size: int, timeout_s: float) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    if world_size > 1:  # the worker's extra groups (parallel.groups.create_groups), on the fake backend
        second = dist.new_group(backend="fake", group_desc="hdp_second")
        host = dist.new_group(backend="fake", group_desc="hdp_host")
        run_groups.install(run_groups.Groups(world=None, second=second, host=host, backend="nccl"))


def record_step(config: TrainConfig, plan: Plan, batch: Any, world_size: int, *, layers: int | None = None,
                full: bool = False, templated: bool | None = None, ranks: Sequence[int] | None = None,
                around: Callable[[torch.nn.Module, Any], ContextManager[Any]] | None = None,
                fast: bool = True) -> Recorded:
    """Run ``plan``'s step on every rank (or ``ranks``) and return what each asked of torch.distributed.

    ``layers``: attention layers the skeleton runs (default: all); ``full``: the real model instead;
    ``templated``: ring shapes run once (default: for more than 64 ranks; ``rings``); ``around(model,
    optimizer)``: a context each rank's ``train_step`` runs in (``memory``: torch's memory tracker);
    ``fast``: the plan hashed once and meta ``add`` at C++ speed (False: torch's own paths, for the
    test that both record the same).
    """
    templated = world_size > 64 if templated is None else templated
    device = torch.device("meta")
    recorder = Recorder()
    rings = RingRecorder(recorder, templated)
    zero = config.zero_for(world_size)
    start = time.perf_counter()
    run_layers = get_model(config.model).num_layers if full or layers is None else layers
    out_ops: list[list[Op]] = []
    syncs: list[int] = []
    stack = contextlib.ExitStack()
    try:
        if fast:
            stack.enter_context(_fingerprint_once(plan))
            stack.enter_context(fast_meta_adds())
        if not full:  # once for all ranks: it walks every loaded module
            stack.enter_context(compute_skipped())
        with torch.device("meta"):  # the model only: a device context would also tax every later op
            decoder = _fake_model(config)
        model = decoder if full else AttentionSkeleton(decoder, run_layers)
        optimizer = None
        idle: tuple[list[Op], int] | None = None
        for rank in (range(world_size) if ranks is None else ranks):
            if idle is not None and not plan.ranks[rank].micro_batches:
                # A rank with no micro-batch runs exactly what the first such rank ran (nothing of its
                # step depends on its rank): its ops are that rank's, not re-run (most ranks of a 2M
                # batch on 1,024 ranks are idle).
                out_ops.append(idle[0])
                syncs.append(idle[1])
                continue
            _join(rank, world_size, config.timeout_s)
            if optimizer is None:
                # Once: every rank's flat buffers have the same sizes (only the shard's offset differs,
                # which communicates nothing), and a second optimizer would hook every parameter again.
                optimizer = build_optimizer(model, config.lr, config.weight_decay, zero=zero)
            recorder.reset()
            counter = HostSyncs()
            with recorder, rings, counter, around(model, optimizer) if around is not None else contextlib.nullcontext():
                train_step(model, optimizer, plan, batch, rank=rank, group=None, device=device,
                           timeout_s=config.timeout_s, max_grad_norm=config.max_grad_norm)
            out_ops.append(recorder.ops)
            syncs.append(counter.count)
            if not plan.ranks[rank].micro_batches:
                idle = (recorder.ops, counter.count)
    finally:
        stack.close()
        run_groups.install(None)
        if dist.is_initialized():
            dist.destroy_process_group()
    return Recorded(plan, out_ops, syncs, rings.templates, run_layers, rings.buffer_bytes, time.perf_counter() - start)
