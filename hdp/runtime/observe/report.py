"""What a run reports: each step's metrics record (MFU from hdp.plan.cost.flops), and rank 0's progress
bar, metrics JSONL, TensorBoard scalars and end-of-run summary."""

from __future__ import annotations

import json
from typing import Any

import torch

from hdp.data.load import TrainingData
from hdp.plan.cost.cost_model import CostModel
from hdp.plan.cost.device import load_profile
from hdp.plan.cost.flops import batch_flops, mfu, tflops_per_device
from hdp.plan.cost.model_config import ModelConfig
from hdp.plan.types import Plan
from hdp.runtime.config import TrainConfig
from hdp.runtime.attention.ring.select import rings_by_algo
from hdp.runtime.train.step import StepResult


CPU_PROFILE = "cpu-small-1t"
"""The peak MFU is measured against on CPU (the default device profile is an H100's)."""


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
    """``tflops_per_device`` and ``mfu`` of a step: causal attention within each document (hdp.plan.cost.flops)."""
    flops = batch_flops(model, (s.length for s in plan.sequences)).total
    return {"tflops_per_device": tflops_per_device(flops, step_time_s, plan.num_ranks),
            "mfu": mfu(flops, step_time_s, plan.num_ranks, peak_tflops)}


def peak_tflops_for(device: torch.device, cost: CostModel) -> float:
    """The peak MFU is measured against: the run's device profile on an accelerator; on CPU the shipped
    CPU profile's (its best measured GEMM rate on one thread), since the default profile is an H100's."""
    if device.type == "cpu":
        return load_profile(CPU_PROFILE).peak_tflops
    return cost.device.peak_tflops


def describe_devices(devices: list[str]) -> str:
    """``cuda:0, cuda:1 (2 ranks)``, or ``cpu (4 ranks)`` when all ranks share one name."""
    names = devices if len(set(devices)) > 1 else devices[:1]
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"{shown} ({len(devices)} rank{'s' if len(devices) != 1 else ''})"


class Reporter:
    """Rank 0's progress bar, metrics file and summary."""

    def __init__(self, config: TrainConfig, enabled: bool, data: TrainingData | None = None,
                 start_step: int = 0) -> None:
        """``start_step`` > 0 (a resumed run): the metrics file is appended to and the bar starts at
        the steps already done."""
        self.config, self.enabled, self.data = config, enabled, data
        self.records: list[dict[str, Any]] = []
        self.devices: list[str] = []
        self._file = open(config.metrics, "a" if start_step else "w") if enabled and config.metrics else None  # noqa: SIM115
        self._config = config.run_config
        """The run's flags as TOML, written once into the first record this run writes (key ``config``)."""
        self._tensorboard = None
        if enabled and config.tensorboard:
            from hdp.runtime.observe.tensorboard import TensorBoardLog

            self._tensorboard = TensorBoardLog(config.tensorboard)
        self._progress = None
        if enabled and config.progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.description}"), TimeElapsedColumn())
            self._task = self._progress.add_task("", total=config.steps, completed=start_step)
            self._progress.start()

    def step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        if self._file:
            line = record if self._config is None else {**record, "config": self._config}
            self._config = None
            self._file.write(json.dumps(line) + "\n")
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
