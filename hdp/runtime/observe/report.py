"""What a run reports: each step's metrics record (MFU from hdp.plan.cost.flops), and rank 0's progress
bar, metrics JSONL, TensorBoard scalars and end-of-run summary."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch

from hdp.data.load import TrainingData
from hdp.plan.cost.cost_model import CostModel
from hdp.plan.cost.device import load_profile
from hdp.plan.cost.flops import batch_flops, mfu, tflops_per_device
from hdp.plan.cost.model_config import ModelConfig
from hdp.plan.estimate import micro_batch_times
from hdp.plan.types import Plan
from hdp.progress import Progress, elapsed
from hdp.runtime.config import TrainConfig
from hdp.runtime.attention.ring.select import rings_by_algo
from hdp.runtime.pipeline.schedule import bubble_fraction
from hdp.runtime.train.step import StepResult


CPU_PROFILE = "cpu-small-1t"
"""The peak MFU is measured against on CPU (the default device profile is an H100's)."""


def metrics_record(step: int, plan: Plan, result: StepResult, step_time_s: float,
                   offloaded_bytes: int = 0, *, model: ModelConfig | None = None,
                   peak_tflops: float | None = None, cost: CostModel | None = None) -> dict[str, Any]:
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
        **result.router,  # a mixture-of-experts model: aux_loss, z_loss, expert_load_max_over_mean, dropped_tokens
    }
    if model is not None:  # what ring attention ran (the plan's algorithm where the ring can run it)
        record["rings_by_algo"] = rings_by_algo(plan, model.num_kv_heads)
    if model is not None and peak_tflops is not None:
        record.update(mfu_record(model, plan, step_time_s, peak_tflops))
    if result.pp_bubble is not None:  # --pp: the stages' measured idle fraction, and the planner's for this plan
        record["pp_bubble"] = result.pp_bubble
        if cost is not None:
            record["pp_bubble_predicted"] = bubble_fraction(micro_batch_times(plan, cost), cost.pp)
    return record


def mfu_record(model: ModelConfig, plan: Plan, step_time_s: float, peak_tflops: float) -> dict[str, float]:
    """``tflops_per_device`` and ``mfu`` of a step: causal attention within each document (hdp.plan.cost.flops)."""
    flops = batch_flops(model, (s.length for s in plan.sequences)).total
    return {"tflops_per_device": tflops_per_device(flops, step_time_s, plan.num_ranks),
            "mfu": mfu(flops, step_time_s, plan.num_ranks, peak_tflops)}


def peak_tflops_for(device: torch.device, cost: CostModel, profile: str | None = None) -> float:
    """The peak MFU is measured against (``mfu_peak``'s value)."""
    return mfu_peak(device, cost, profile)[0]


def mfu_peak(device: torch.device, cost: CostModel, profile: str | None = None) -> tuple[float, str]:
    """(peak TFLOP/s, the profile it is from): ``--profile`` when given (a calibration of this machine is
    the right one); else on an accelerator the run's cost-model profile, on CPU the shipped CPU profile
    (its best measured GEMM rate on one thread), since the default profile is an H100's."""
    if profile is not None:
        return cost.device.peak_tflops, cost.device.name
    if device.type == "cpu":
        cpu = load_profile(CPU_PROFILE)
        return cpu.peak_tflops, cpu.name
    return cost.device.peak_tflops, cost.device.name


def mfu_text(mfu_value: float, peak: tuple[float, str] | None) -> str:
    """``12.3%``; above 100% the peak is wrong, and the text says so and what to do."""
    if mfu_value <= 1.0 or peak is None:
        return f"{mfu_value:.1%}"
    return (f"{mfu_value:.1%} (impossible: the peak of profile {peak[1]}, {peak[0]:.3g} TFLOP/s, is below what this "
            "device does; measure it with 'hdp calibrate' and pass the file with --profile)")


def describe_devices(devices: list[str], ranks_per_node: int | None = None) -> str:
    """``cuda:0, cuda:1 (2 ranks)``, or ``cpu (4 ranks)`` when all ranks share one name; with more than
    one node, ``cpu (4 ranks: 2 nodes x 2)``."""
    names = devices if len(set(devices)) > 1 else devices[:1]
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    n = len(devices)
    if ranks_per_node and ranks_per_node < n:
        nodes = -(-n // ranks_per_node)
        return f"{shown} ({n} ranks: {nodes} nodes x {ranks_per_node})"
    return f"{shown} ({n} rank{'s' if n != 1 else ''})"


def step_line(record: dict[str, Any], steps: int, elapsed_s: float, peak: tuple[float, str] | None = None) -> str:
    """One plain line for a log file: ``step 11/40  loss 5.3384  lr 3e-03  1,365 tok/s  0.19 s  ...``."""
    parts = [f"step {record['step'] + 1}/{steps}", f"loss {_loss(record)}"]
    if "lr" in record:
        parts.append(f"lr {record['lr']:.3g}")
    parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
    if "step_time_s" in record:
        parts.append(f"{record['step_time_s']:.3g} s/step")
    if "mfu" in record:
        parts.append(f"MFU {mfu_text(record['mfu'], peak)}")
    if record.get("skipped"):
        parts.append("skipped (non-finite)")
    parts.append(f"elapsed {elapsed(elapsed_s)}")
    return "  ".join(parts)


class Reporter:
    """Rank 0's progress bar, metrics file and summary."""

    def __init__(self, config: TrainConfig, enabled: bool, data: TrainingData | None = None,
                 start_step: int = 0) -> None:
        """``start_step`` > 0 (a resumed run): the metrics file is appended to and the bar starts at
        the steps already done."""
        self.config, self.enabled, self.data = config, enabled, data
        self.records: list[dict[str, Any]] = []
        self.devices: list[str] = []
        self.ranks_per_node: int | None = None
        self.peak: tuple[float, str] | None = None
        """(TFLOP/s, profile name) MFU is measured against, for the over-100% warning."""
        self.saved: list[str] = []
        """Checkpoints this run wrote (for the summary)."""
        self._warned_mfu = False
        self._started = time.monotonic()
        self._file = open(config.metrics, "a" if start_step else "w") if enabled and config.metrics else None  # noqa: SIM115
        self._config = config.run_config
        """The run's flags as TOML, written once into the first record this run writes (key ``config``)."""
        self._tensorboard = None
        if enabled and config.tensorboard:
            from hdp.runtime.observe.tensorboard import TensorBoardLog

            self._tensorboard = TensorBoardLog(config.tensorboard, start_step)
        # A bar on a terminal; in a log file (nohup, SLURM, `> run.log`) plain flushed lines, one per step
        # or every --log-every (hdp.progress, shared with hdp simulate).
        self._progress = Progress("train", config.steps, stream=sys.stdout, every=config.log_every,
                                  start=start_step) if enabled and config.progress else None

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
            self._progress.update(record["step"] + 1, f"loss {_loss(record)}  {record['tokens_per_s']:,.0f} tok/s",
                                  lambda: step_line(record, self.config.steps, time.monotonic() - self._started,
                                                    self.peak))
        if "mfu" in record and record["mfu"] > 1.0 and not self._warned_mfu:
            self._warned_mfu = True
            print(f"hdp train: warning: step {record['step']}: MFU {mfu_text(record['mfu'], self.peak)}",
                  file=sys.stderr, flush=True)

    def begin(self, source: str | None, start_step: int, cost_profile: str) -> None:
        """The run's first lines, before the first step: what a person checks first in a log (where it
        resumed from, where it saves, on what it runs and against which profile)."""
        if not self.enabled or not self.config.progress:
            return
        for line in self.first_lines(source, start_step, cost_profile):
            print(f"hdp train: {line}", flush=True)

    def first_lines(self, source: str | None, start_step: int, cost_profile: str) -> list[str]:
        c = self.config
        lines = []
        if source is not None and start_step:
            lines.append(f"resumed from {source} (step {start_step} of {c.steps})")
        if c.save_dir:
            lines.append(f"saving checkpoints to {c.save_dir} "
                         + ({None: "", 1: "every step and "}.get(c.save_every, f"every {c.save_every} steps and ")) + "after the last step")
        where = describe_devices(self.devices, self.ranks_per_node) if self.devices else "?"
        peak = f"; MFU against {self.peak[1]} ({self.peak[0]:.3g} TFLOP/s)" if self.peak else ""
        capacity = f"capacity {c.capacity:,} tokens per rank; " if c.capacity else ""
        lines.append(f"{where}; {capacity}cost model {cost_profile}{peak}")
        return lines

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
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
            t.add_row("devices", describe_devices(self.devices, self.ranks_per_node))
        t.add_row("loss first → last", f"{_loss(recs[0])} → {_loss(recs[-1])}")
        t.add_row("tokens per step", f"{recs[0]['tokens']:,}")
        t.add_row("tokens/s (after step 0)", f"{tps:,.0f}")
        if "mfu" in recs[0]:
            t.add_row("MFU (after step 0)", f"{mfu_text(sum(r['mfu'] for r in timed) / len(timed), self.peak)} "
                                            f"({sum(r['tflops_per_device'] for r in timed) / len(timed):.3g} TFLOP/s per device)")
        t.add_row("rings per step (max size)", f"{max(r['rings'] for r in recs)} ({max(r['max_ring'] for r in recs)})")
        if "expert_load_max_over_mean" in recs[0]:
            t.add_row("router (first → last)", router_summary(recs[0]) + " → " + router_summary(recs[-1]))
        t.add_row("micro-batches per rank", f"{min(r['micro_batches_min'] for r in recs)} – "
                                            f"{max(r['micro_batches_max'] for r in recs)}")
        last = recs[-1]
        if "state_bytes" in last:
            t.add_row("model states per rank", f"{last['state_bytes'] / 1e6:,.1f} MB measured, "
                                               f"{last['planned_state_bytes'] / 1e6:,.1f} MB planned (--zero {last['zero']}, "
                                               f"{last['param_dtype']} params, {last['master_dtype']} optimizer)")
        if self.data is not None:
            t.add_row("data", f"{self.data.where} ({self.data.tokenizer}, {self.data.empty_documents:,} empty skipped)")
        for name, where in self.outputs():
            t.add_row(name, where)
        Console().print(t)

    def outputs(self) -> list[tuple[str, str]]:
        """Where the run's results went, for the summary; a run that keeps no model says how to."""
        c = self.config
        rows = []
        if c.save_dir:
            rows.append(("checkpoints", f"{c.save_dir} ({', '.join(os.path.basename(p) for p in self.saved)})"
                         if self.saved else c.save_dir))
        if c.export_hf:
            rows.append(("exported model", c.export_hf))
        if not c.save_dir and not c.export_hf:
            rows.append(("model", "not kept: add --save-dir DIR (checkpoints) or --export-hf DIR (a Hugging Face "
                                  "directory) to keep it"))
        for name, where in (("metrics", c.metrics), ("tensorboard", c.tensorboard), ("batches", c.dump_batches)):
            if where:
                rows.append((name, where))
        return rows


def router_summary(record: dict[str, Any]) -> str:
    """``aux 2.013, z 0.41, load max/mean 1.32, dropped 0`` (what the record has)."""
    parts = [f"{name} {record[key]:.4g}" for name, key in (("aux", "aux_loss"), ("z", "z_loss"))
             if record.get(key) is not None]
    parts.append(f"load max/mean {record['expert_load_max_over_mean']:.3g}, dropped {record['dropped_tokens']}")
    return ", ".join(parts)


def _loss(record: dict[str, Any]) -> str:
    """A record's loss for people (None: a skipped non-finite step)."""
    return "nan" if record["loss"] is None else f"{record['loss']:.4f}"
