"""What one rank does for a whole run: process group, model, then per step plan -> train_step -> report.

Every rank computes the same data and plan for a step from the config alone (no broadcast); the
fingerprint check in ``train_step`` catches any rank that did not. Errors become one line on
stderr naming the rank and what is wrong, and a non-zero return code.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from hdp.data.batches import BatchStream
from hdp.data.dump import BatchDump
from hdp.data.load import TrainingData, load_training_data
from hdp.data.tokenizer import check_vocab
from hdp.plan import build_cost_model, get_strategy, make_plan
from hdp.plan.cost import CostModel
from hdp.plan.device import load_profile
from hdp.plan.flops import batch_flops, mfu, tflops_per_device
from hdp.plan.model_config import ModelConfig
from hdp.plan.sharding import num_offload_layers
from hdp.plan.types import Plan
from hdp.plan.zigzag import max_member_tokens, ranks_needed
from hdp.plan.memory import state_bytes as planned_state_bytes
from hdp.runtime.checkpoint import after_step, open_checkpoint
from hdp.runtime.config import TrainConfig
from hdp.runtime.lr_schedule import lr_at
from hdp.runtime.memory_stats import memory_record
from hdp.runtime.model_source import build_train_model, model_shape
from hdp.runtime.offload import ActivationOffloader
from hdp.runtime.faults import Fault
from hdp.runtime.peers import PeerError, collective, peer_cause
from hdp.runtime.ring_select import rings_by_algo, with_ring_algo
from hdp.runtime.test_hooks import maybe_kill
from hdp.runtime.train_step import StepResult, build_optimizer, train_step

EXIT_USER_ERROR = 2
EXIT_PEER_FAILURE = 3
EXIT_NON_FINITE = 4
EXIT_INTERRUPTED = 130
REPORTED_CODES = (EXIT_USER_ERROR, EXIT_PEER_FAILURE, EXIT_NON_FINITE, EXIT_INTERRUPTED)
"""Exit codes of a rank that has printed its own one-line reason (the launcher adds nothing)."""

CPU_PROFILE = "cpu-small-1t"


class NonFiniteStep(Exception):
    """A step's loss or gradient was NaN/Inf under ``--on-nan stop`` (every rank raises it together)."""


@dataclass(frozen=True)
class Run:
    """The rank-independent parts of a run: data stream and cost model."""

    config: TrainConfig
    stream: BatchStream
    cost: CostModel
    data: TrainingData | None = None

    @classmethod
    def from_config(cls, config: TrainConfig, num_ranks: int | None = None) -> "Run":
        """``capacity=None`` in ``config`` is derived for ``num_ranks`` (``default_capacity``)."""
        cfg = model_shape(config)
        data = load_training_data(config.data, config.tokenizer, config.text_field)
        check_vocab(data.tokenizer, data.vocab_size, cfg.vocab_size, config.hf_model or config.model)
        stream = BatchStream(data.corpus, config.global_batch_tokens, config.max_seq_len, config.seed)
        run = cls(config, stream, build_cost_model(cfg, recompute=config.recompute, dtype=config.dtype), data)
        if config.capacity is None:
            if num_ranks is None:
                raise ValueError("capacity is None: pass num_ranks to derive it")
            run = replace(run, config=replace(config, capacity=run.default_capacity(num_ranks)))
        return run

    @property
    def longest(self) -> int:
        """The longest sequence a step can hold: documents are cut at max_seq_len, batches at their size."""
        c = self.config
        return min(c.max_seq_len, c.global_batch_tokens, max(self.stream.corpus.doc_lengths))

    def _make_plan(self, lengths: list[int], num_ranks: int, capacity: int) -> Plan:
        c = self.config
        return make_plan(lengths, num_ranks, capacity, self.cost, get_strategy(c.strategy, offload=c.offload),
                         max_len=c.max_seq_len, seed=c.seed)

    def plan(self, step: int, num_ranks: int) -> Plan:
        """The plan of ``step`` for ``num_ranks`` ranks (pure: same on every rank), with --ring-algo applied."""
        assert self.config.capacity is not None
        plan = self._make_plan(self.stream.batch(step).lengths, num_ranks, self.config.capacity)
        if self.config.ring_algo is None and self.config.gpus_per_node is None:
            return plan  # the planner's rings, algorithms and topology as given
        return with_ring_algo(plan, self.config.ring_algo, self.gpus_per_node(plan, num_ranks),
                              self.cost.model.num_kv_heads)

    def gpus_per_node(self, plan: Plan, num_ranks: int) -> int:
        """--gpus-per-node, else the plan's, else LOCAL_WORLD_SIZE (torchrun), else one node of num_ranks."""
        if self.config.gpus_per_node is not None:
            return self.config.gpus_per_node
        if plan.gpus_per_node > 0:
            return plan.gpus_per_node
        return int(os.environ.get("LOCAL_WORLD_SIZE", num_ranks))

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
        # Model states + activations of --capacity tokens on the device the plan is costed for.
        dataclasses.replace(self.cost, zero=c.zero_for(num_ranks)).check_fits(num_ranks, c.capacity)
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
                   offloaded_bytes: int = 0, *, model: ModelConfig | None = None,
                   peak_tflops: float | None = None) -> dict[str, Any]:
    counts = [len(rp.micro_batches) for rp in plan.ranks]
    record = {
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
    if model is not None:  # what ring attention ran (the plan's algorithm where the ring can run it)
        record["rings_by_algo"] = rings_by_algo(plan, model.num_kv_heads)
    if model is not None and peak_tflops is not None:
        record.update(mfu_record(model, plan, step_time_s, peak_tflops))
    return record


def mfu_record(model: ModelConfig, plan: Plan, step_time_s: float, peak_tflops: float) -> dict[str, float]:
    """``tflops_per_device`` and ``mfu`` of a step: causal attention within each document (hdp.plan.flops)."""
    flops = batch_flops(model, (s.length for s in plan.sequences)).total
    return {"tflops_per_device": tflops_per_device(flops, step_time_s, plan.num_ranks),
            "mfu": mfu(flops, step_time_s, plan.num_ranks, peak_tflops)}


def peak_tflops_for(device: torch.device, cost: CostModel) -> float:
    """The peak MFU is measured against: the run's device profile on an accelerator; on CPU the shipped
    CPU profile's (its best measured GEMM rate on one thread), since the default profile is an H100's."""
    if device.type == "cpu":
        return load_profile(CPU_PROFILE).peak_tflops
    return cost.device.peak_tflops


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
        cause = str(e) if isinstance(e, PeerError) else peer_cause(e)
        print(f"hdp train: error: rank {rank}: a peer failed or did not answer within --timeout "
              f"{config.timeout_s:g} s: {cause}", file=sys.stderr, flush=True)
        return EXIT_PEER_FAILURE
    except NonFiniteStep as e:  # every rank knows; one says it
        if rank == 0:
            print(f"hdp train: error: {e}", file=sys.stderr, flush=True)
        return EXIT_NON_FINITE
    except KeyboardInterrupt:  # under torchrun the agent forwards Ctrl-C: one line, no traceback per rank
        if rank == 0:
            print("hdp train: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
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
    model = build_train_model(config, device)
    fault = Fault.from_env()  # HDP_DEBUG_FAULT (hdp.runtime.faults); None in normal runs
    if fault is not None:
        fault.install(model, rank)
    zero = config.zero_for(world_size)
    optimizer = build_optimizer(model, config.lr, config.weight_decay, zero=zero)
    ckpt, start_step = open_checkpoint(config, run.stream.corpus.doc_lengths, optimizer, rank, world_size)
    planned = planned_state_bytes(optimizer.numel, dtype=config.dtype, zero=zero, world_size=world_size).total
    fixed = {"zero": zero, **optimizer.precision.describe(), "recompute": config.recompute,
             "planned_state_bytes": planned}
    offload = None
    if config.offload or offload_layers:
        offload = ActivationOffloader(device, model.cfg.num_layers, model.parameters())
    reporter = Reporter(config, enabled=rank == 0, data=run.data, append=start_step > 0)
    reporter.devices = _gather_devices(device, world_size)
    peak = peak_tflops_for(device, run.cost)
    dump = BatchDump(config.dump_batches, append=start_step > 0) if rank == 0 and config.dump_batches else None
    try:
        for step in range(start_step, config.steps):
            maybe_kill(rank, step)  # HDP_TEST_KILL only (hdp.runtime.test_hooks)
            start = time.perf_counter()
            plan = run.plan(step, world_size)
            lr = lr_at(step, lr=config.lr, steps=config.lr_steps, schedule=config.lr_schedule,
                       warmup_steps=config.warmup_steps, min_lr=config.final_lr)
            batch = run.stream.batch(step)
            if fault is not None:
                fault.current_step = step
            try:
                result = train_step(model, optimizer, plan, batch, rank=rank, group=None, device=device,
                                    timeout_s=config.timeout_s, max_grad_norm=config.max_grad_norm, offload=offload,
                                    offload_layers=offload_layers, lr=lr)
            except (PeerError, dist.DistError) as e:  # say where: step (the ring error names ring, micro-batch, peer)
                raise PeerError(f"step {step}: {e if isinstance(e, PeerError) else peer_cause(e)}") from e
            except ValueError as e:
                raise ValueError(f"step {step}: {e}") from None
            skipped = not result.finite and check_finite(result, batch, step, config.on_nan, rank)
            copied = offload.offloaded_bytes if offload else 0
            elapsed = time.perf_counter() - start
            record = {**metrics_record(step, plan, result, elapsed, copied, model=model.cfg, peak_tflops=peak),
                      "lr": lr, **fixed, **memory_record(optimizer, device)}
            if skipped:  # null, not NaN: the metrics file stays strict JSON
                record.update(skipped=True, **{k: None for k in ("loss", "grad_norm") if not math.isfinite(record[k])})
            reporter.step(record)
            if dump is not None:  # after the step's timing: reading the whole batch is not training work
                dump.write(step, batch)
            after_step(ckpt, config, step + 1)
        if ckpt is not None:
            ckpt.wait()
    finally:
        reporter.close()
        if dump is not None:
            dump.close()
    if config.export_hf and rank == 0:
        from hdp.runtime.hf_export import export_hf

        export_hf(model, config.export_hf, max_positions=config.max_seq_len, tokenizer=config.tokenizer)
    reporter.summary()
    return 0


def check_finite(result: StepResult, batch: Any, step: int, on_nan: str, rank: int) -> bool:
    """A non-finite step (the update was skipped on every rank): raise (``stop``) or warn (``skip``).
    Returns True: the step was skipped. Either way the model keeps its last finite state."""
    docs = sorted({s.doc for s in batch.slices})
    shown = ", ".join(map(str, docs[:20])) + (f", ... ({len(docs)} in all)" if len(docs) > 20 else "")
    what = (f"step {step}: loss {result.loss:g}, gradient norm {result.grad_norm:g} (documents {shown})")
    if on_nan == "stop":
        raise NonFiniteStep(f"{what}: stopped before the update, so the last state is finite (--on-nan skip "
                            "would skip such steps)")
    if rank == 0:
        print(f"hdp train: warning: {what}: update skipped (--on-nan skip)", file=sys.stderr, flush=True)
    return True


class Reporter:
    """Rank 0's progress bar, metrics file and summary."""

    def __init__(self, config: TrainConfig, enabled: bool, data: TrainingData | None = None,
                 append: bool = False) -> None:
        self.config, self.enabled, self.data = config, enabled, data
        self.records: list[dict[str, Any]] = []
        self.devices: list[str] = []
        self._file = open(config.metrics, "a" if append else "w") if enabled and config.metrics else None  # noqa: SIM115
        self._tensorboard = None
        if enabled and config.tensorboard:
            from hdp.runtime.tensorboard import TensorBoardLog

            self._tensorboard = TensorBoardLog(config.tensorboard)
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
        if self._tensorboard is not None:
            self._tensorboard.write(record)
        if self._progress is not None:
            self._progress.update(self._task, advance=1,
                                  description=f"loss {_loss(record)}  {record['tokens_per_s']:,.0f} tok/s")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._file:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def summary(self) -> None:
        if not self.enabled or not self.config.progress or not self.records:
            return
        from rich.console import Console
        from rich.table import Table

        recs = self.records
        timed = recs[1:] or recs  # the first step pays for warm-up
        tps = sum(r["tokens"] for r in timed) / sum(r["step_time_s"] for r in timed)
        t = Table(title=f"hdp train · {self.config.hf_model or self.config.model} · {recs[0]['strategy']}", show_header=False)
        t.add_row("steps", str(len(recs)))
        if self.devices:
            t.add_row("devices", describe_devices(self.devices))
        t.add_row("loss first → last", f"{_loss(recs[0])} → {_loss(recs[-1])}")
        t.add_row("tokens per step", f"{recs[0]['tokens']:,}")
        t.add_row("tokens/s (after step 0)", f"{tps:,.0f}")
        if "mfu" in recs[0]:
            t.add_row("MFU (after step 0)", f"{sum(r['mfu'] for r in timed) / len(timed):.1%} "
                                            f"({sum(r['tflops_per_device'] for r in timed) / len(timed):.3g} TFLOP/s per device)")
        t.add_row("rings per step (max size)", f"{max(r['rings'] for r in recs)} ({max(r['max_ring'] for r in recs)})")
        t.add_row("micro-batches per rank", f"{min(r['micro_batches_min'] for r in recs)} – "
                                            f"{max(r['micro_batches_max'] for r in recs)}")
        last = recs[-1]
        if "state_bytes" in last:
            t.add_row("model states per rank", f"{last['state_bytes'] / 1e6:,.1f} MB measured, "
                                               f"{last['planned_state_bytes'] / 1e6:,.1f} MB planned (--zero {last['zero']}, "
                                               f"{last['param_dtype']} params, {last['master_dtype']} optimizer)")
        if self.data is not None:
            t.add_row("data", f"{self.data.where} ({self.data.tokenizer}, {self.data.empty_documents:,} empty skipped)")
        if self.config.metrics:
            t.add_row("metrics", self.config.metrics)
        Console().print(t)


def _loss(record: dict[str, Any]) -> str:
    """A record's loss for people (None: a skipped non-finite step)."""
    return "nan" if record["loss"] is None else f"{record['loss']:.4f}"


def env_rank() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) under torchrun, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return None
