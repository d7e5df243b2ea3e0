"""What one rank does for a whole run: process group, model, then per step plan -> train_step -> report.

Every rank computes the same data and plan for a step from the config alone (no broadcast); the
fingerprint check in ``train_step`` catches any rank that did not. Errors become one line on
stderr naming the rank and what is wrong, and a non-zero return code.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from hdp.data.batches import BatchStream
from hdp.data.corpus import VOCAB_SIZE, load_corpus
from hdp.plan import build_cost_model, get_model, make_plan
from hdp.plan.cost import CostModel
from hdp.plan.sharding import num_offload_layers
from hdp.plan.types import Plan
from hdp.plan.zigzag import max_member_tokens, ranks_needed
from hdp.runtime.config import TrainConfig
from hdp.runtime.model import build_model
from hdp.runtime.offload import ActivationOffloader
from hdp.runtime.peers import PeerError, collective
from hdp.runtime.train_step import StepResult, build_optimizer, train_step

EXIT_USER_ERROR = 2
EXIT_PEER_FAILURE = 3


@dataclass(frozen=True)
class Run:
    """The rank-independent parts of a run: data stream and cost model."""

    config: TrainConfig
    stream: BatchStream
    cost: CostModel

    @classmethod
    def from_config(cls, config: TrainConfig, num_ranks: int | None = None) -> "Run":
        """``capacity=None`` in ``config`` is derived for ``num_ranks`` (``default_capacity``)."""
        cfg = get_model(config.model)
        if cfg.vocab_size < VOCAB_SIZE:
            raise ValueError(f"model {config.model} has {cfg.vocab_size} tokens; byte data needs {VOCAB_SIZE}")
        stream = BatchStream(load_corpus(config.data), config.global_batch_tokens, config.max_seq_len, config.seed)
        run = cls(config, stream, build_cost_model(config.model))
        if config.capacity is None:
            if num_ranks is None:
                raise ValueError("capacity is None: pass num_ranks to derive it")
            run = cls(replace(config, capacity=run.default_capacity(num_ranks)), stream, run.cost)
        return run

    @property
    def longest(self) -> int:
        """The longest sequence a step can hold: documents are cut at max_seq_len, batches at their size."""
        c = self.config
        return min(c.max_seq_len, c.global_batch_tokens, max(self.stream.corpus.doc_lengths))

    def _make_plan(self, lengths: list[int], num_ranks: int, capacity: int) -> Plan:
        c = self.config
        return make_plan(lengths, num_ranks, capacity, self.cost, strategy=c.strategy, offload=c.offload,
                         max_len=c.max_seq_len, seed=c.seed)

    def plan(self, step: int, num_ranks: int) -> Plan:
        """The plan of ``step`` for ``num_ranks`` ranks (pure: same on every rank)."""
        assert self.config.capacity is not None
        return self._make_plan(self.stream.batch(step).lengths, num_ranks, self.config.capacity)

    def default_capacity(self, num_ranks: int) -> int:
        """The smallest capacity at which the strategy can plan the longest sequence on num_ranks ranks:
        the largest zig-zag member of it split m ways, for m = num_ranks, num_ranks - 1, ...; m = 1
        (whole, on one rank) always works, so the default run works on any number of ranks."""
        for m in range(num_ranks, 1, -1):
            capacity = max_member_tokens(self.longest, m)
            try:
                self._make_plan([self.longest], num_ranks, capacity)
                return capacity
            except ValueError:
                continue
        return self.longest

    def check_feasible(self, num_ranks: int) -> None:
        """Fail before starting processes if the longest allowed sequence cannot be held by the cluster."""
        c = self.config
        assert c.capacity is not None
        what = (f"the longest sequence of a step ({self.longest:,} tokens: documents are cut at max_seq_len "
                f"{c.max_seq_len:,})")
        needed = ranks_needed(self.longest, c.capacity)
        if needed > num_ranks:
            raise ValueError(f"{what} needs {needed:,} ranks at capacity {c.capacity:,} but only {num_ranks:,} "
                             "exist: raise the number of ranks or the capacity, or lower max_seq_len")
        try:  # what else a strategy may need (static: a divisor of the rank count that holds it)
            self._make_plan([self.longest], num_ranks, c.capacity)
        except ValueError as e:
            raise ValueError(f"{what} cannot be planned on {num_ranks:,} ranks at capacity {c.capacity:,} "
                             f"with strategy {c.strategy}: {e}") from None

    def offload_layers(self) -> int | None:
        """Layers every micro-batch offloads under the ``offload_ratio`` override (None: as planned)."""
        c = self.config
        if c.offload_ratio is None:
            return None
        layers = num_offload_layers(c.offload_ratio, self.cost.layers)
        if layers == 0 and c.offload_ratio > 0:
            raise ValueError(f"offload_ratio {c.offload_ratio:g} offloads no layer of model {c.model}: of its "
                             f"{self.cost.layers} layers the first and last always stay on the device, so "
                             f"{max(self.cost.layers - 2, 0)} can offload; use a model with more layers or a "
                             "larger ratio")
        return layers


def metrics_record(step: int, plan: Plan, result: StepResult, step_time_s: float,
                   offloaded_bytes: int = 0) -> dict[str, Any]:
    counts = [len(rp.micro_batches) for rp in plan.ranks]
    return {
        "step": step,
        "loss": result.loss,
        "grad_norm": result.grad_norm,
        "tokens": result.tokens,
        "step_time_s": step_time_s,
        "tokens_per_s": result.tokens / step_time_s if step_time_s > 0 else 0.0,
        "strategy": plan.strategy,
        "rings": len(plan.rings),
        "max_ring": plan.max_ring,
        "micro_batches_min": min(counts),
        "micro_batches_max": max(counts),
        "offloaded_bytes": offloaded_bytes,
    }


def pick_device(local_rank: int, use_accelerator: bool) -> torch.device:
    """Local accelerator ``local_rank`` when asked for and present, else CPU (gloo). No device literals."""
    if use_accelerator and torch.accelerator.is_available() and local_rank < torch.accelerator.device_count():
        acc = torch.accelerator.current_accelerator()
        assert acc is not None
        torch.accelerator.set_device_index(local_rank)
        return torch.device(acc.type, local_rank)
    return torch.device("cpu")


def _gather_devices(device: torch.device, world_size: int) -> list[str]:
    """Every rank's device, for rank 0's summary (one small collective at start-up)."""
    if world_size == 1:
        return [str(device)]
    devices: list[Any] = [None] * world_size
    with collective("gathering the ranks' devices"):
        dist.all_gather_object(devices, str(device))
    return [str(d) for d in devices]


def describe_devices(devices: list[str]) -> str:
    """``cuda:0, cuda:1 (2 ranks)``, or ``cpu (4 ranks)`` when all ranks share one name."""
    names = devices if len(set(devices)) > 1 else devices[:1]
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"{shown} ({len(devices)} rank{'s' if len(devices) != 1 else ''})"


def init_group(rank: int, world_size: int, device: torch.device, timeout_s: float) -> None:
    """Create the default process group once (env:// rendezvous: MASTER_ADDR/MASTER_PORT)."""
    backend = dist.get_default_backend_for_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if device.type != "cpu" else None)


def run_rank(config: TrainConfig, rank: int, world_size: int, local_rank: int, *, use_accelerator: bool) -> int:
    """Train on this rank; returns the process exit code (0 on success)."""
    try:
        return _train(config, rank, world_size, local_rank, use_accelerator)
    except ValueError as e:
        print(f"hdp train: error: rank {rank}: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except (dist.DistError, PeerError) as e:  # a peer died, hung or left: not a bug of ours
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"hdp train: error: rank {rank}: a peer failed or did not answer within --timeout "
              f"{config.timeout_s:g} s ({type(e).__name__}: {first[:300]})", file=sys.stderr, flush=True)
        return EXIT_PEER_FAILURE
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a broken group cannot always be torn down; exiting is enough
                pass


def _train(config: TrainConfig, rank: int, world_size: int, local_rank: int, use_accelerator: bool) -> int:
    run = Run.from_config(config, world_size)
    config = run.config
    run.check_feasible(world_size)
    offload_layers = run.offload_layers()
    device = pick_device(local_rank, use_accelerator)
    init_group(rank, world_size, device, config.timeout_s)
    model = build_model(get_model(config.model), dtype=config.torch_dtype, device=device, seed=config.seed)
    optimizer = build_optimizer(model, config.lr, config.weight_decay)
    offload = None
    if config.offload or offload_layers:
        offload = ActivationOffloader(device, model.cfg.num_layers, model.parameters())
    reporter = Reporter(config, enabled=rank == 0)
    reporter.devices = _gather_devices(device, world_size)
    try:
        for step in range(config.steps):
            start = time.perf_counter()
            plan = run.plan(step, world_size)
            result = train_step(model, optimizer, plan, run.stream.batch(step), rank=rank, group=None, device=device,
                                timeout_s=config.timeout_s, max_grad_norm=config.max_grad_norm, offload=offload,
                                offload_layers=offload_layers)
            copied = offload.offloaded_bytes if offload else 0
            reporter.step(metrics_record(step, plan, result, time.perf_counter() - start, copied))
    finally:
        reporter.close()
    reporter.summary()
    return 0


class Reporter:
    """Rank 0's progress bar, metrics file and summary."""

    def __init__(self, config: TrainConfig, enabled: bool) -> None:
        self.config, self.enabled = config, enabled
        self.records: list[dict[str, Any]] = []
        self.devices: list[str] = []
        self._file = open(config.metrics, "w") if enabled and config.metrics else None  # noqa: SIM115
        self._progress = None
        if enabled and config.progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.description}"), TimeElapsedColumn())
            self._task = self._progress.add_task("", total=config.steps)
            self._progress.start()

    def step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        if self._file:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._progress is not None:
            self._progress.update(self._task, advance=1,
                                  description=f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._file:
            self._file.close()
            self._file = None

    def summary(self) -> None:
        if not self.enabled or not self.config.progress or not self.records:
            return
        from rich.console import Console
        from rich.table import Table

        recs = self.records
        timed = recs[1:] or recs  # the first step pays for warm-up
        tps = sum(r["tokens"] for r in timed) / sum(r["step_time_s"] for r in timed)
        t = Table(title=f"hdp train · {self.config.model} · {recs[0]['strategy']}", show_header=False)
        t.add_row("steps", str(len(recs)))
        if self.devices:
            t.add_row("devices", describe_devices(self.devices))
        t.add_row("loss first → last", f"{recs[0]['loss']:.4f} → {recs[-1]['loss']:.4f}")
        t.add_row("tokens per step", f"{recs[0]['tokens']:,}")
        t.add_row("tokens/s (after step 0)", f"{tps:,.0f}")
        t.add_row("rings per step (max size)", f"{max(r['rings'] for r in recs)} ({max(r['max_ring'] for r in recs)})")
        t.add_row("micro-batches per rank", f"{min(r['micro_batches_min'] for r in recs)} – "
                                            f"{max(r['micro_batches_max'] for r in recs)}")
        if self.config.metrics:
            t.add_row("metrics", self.config.metrics)
        Console().print(t)


def env_rank() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) under torchrun, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return None
