"""What this machine can run, checked before the first process starts: the optional packages a run
will import, the number of local processes, and the memory of the device each rank will use.

Each check is one line naming what is wrong and what to do (a ``ValueError``), found in a moment:
``hdp train --nproc 100000`` must not fork until memory runs out, and ``--model llama-7b`` on a
24 GB CPU box must be refused, not OOM-killed after minutes. Memory is judged against the device
that runs the ranks (host RAM shared by the CPU ranks of this machine; an accelerator's free memory
as ``mem_get_info`` reports it), never against the cost model's profile (an H100 by default).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.cost.memory import ACT_BYTES, DTYPE_BYTES
from hdp.runtime.config import TrainConfig

RANK_BASE_BYTES = 256 * 2**20
"""Host memory one CPU rank holds before any model (Python, torch, gloo; ~270 MB RSS measured with torch
2.13). A bound for --nproc: 100,000 processes cannot start on a machine with a few GB."""
USABLE_FRACTION = 0.9
"""Of a device's memory, what a run may plan to fill (the rest: allocator slack, the OS, the data)."""

HF_EXTRA = "pip install 'hdp[hf]' (in a checkout: pip install -e '.[hf]')"


def importable(package: str) -> bool:
    """The package can be imported (without importing it: transformers takes seconds)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module whose __spec__ is None
        return False


def check_extras(config: TrainConfig) -> None:
    """Every optional package the run will need, before the first process starts: without the ``hf``
    extra, ``--hf-model`` was a traceback and ``--export-hf`` failed after the last step (the trained
    model lost). The data extras (--tokenizer, Parquet, datasets) are checked where the data is read,
    also before any rank starts; --tensorboard by ``check_tensorboard_dir``."""
    needs = []
    if config.hf_model:
        needs.append(("--hf-model", "transformers"))
    if config.export_hf:
        needs += [("--export-hf", "transformers"), ("--export-hf", "safetensors")]
    missing = [(flag, pkg) for flag, pkg in needs if not importable(pkg)]
    if missing:
        flags = sorted({flag for flag, _ in missing})
        packages = sorted({pkg for _, pkg in missing})
        raise ValueError(f"{' and '.join(flags)} need{'s' if len(flags) == 1 else ''} the 'hf' extra "
                         f"({', '.join(packages)} {'is' if len(packages) == 1 else 'are'} not installed): {HF_EXTRA}")


@dataclass(frozen=True)
class RankMemory:
    """What one rank may fill: its share of host RAM (CPU ranks) or its accelerator's free memory."""

    bytes: float
    what: str
    """For the refusal: ``each of the 4 CPU ranks here has 5.6 GiB (22.3 GiB of host RAM available)``."""


def available_host_bytes() -> int:
    """Host memory a new process may use: MemAvailable, capped by this cgroup's limit (a container, a
    SLURM job) where one is set."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, avail)


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def host_memory(ranks_here: int) -> RankMemory:
    """Each CPU rank's share of this machine's available host RAM."""
    avail = available_host_bytes()
    share = avail / max(1, ranks_here) - RANK_BASE_BYTES
    return RankMemory(share, f"each of the {ranks_here:,} CPU rank{'s' if ranks_here != 1 else ''} here has "
                             f"{gib(max(share, 0))} ({gib(avail)} of host RAM available, "
                             f"{gib(RANK_BASE_BYTES)} per process for Python and torch)")


def accelerator_memory(device) -> RankMemory | None:
    """The free memory of this rank's accelerator (``torch.<type>.mem_get_info``); None where the device
    type cannot say."""
    import torch

    module = getattr(torch, device.type, None)
    info = getattr(module, "mem_get_info", None)
    if info is None:
        return None
    free, total = info(device)
    return RankMemory(float(free), f"{device} has {gib(free)} free of {gib(total)}")


def check_local_ranks(nproc: int, use_accelerator: bool) -> None:
    """--nproc local processes must be able to start here: one accelerator each, or CPU processes that
    fit in host RAM (checked before the planner runs: it too would take minutes at 100,000 ranks)."""
    if nproc < 1:
        raise ValueError(f"--nproc (processes to spawn) must be >= 1, got {nproc}")
    if use_accelerator:
        return
    avail = available_host_bytes()
    most = max(1, int(avail // RANK_BASE_BYTES))
    if nproc > most:
        raise ValueError(f"--nproc {nproc:,}: {nproc:,} CPU processes need at least {gib(nproc * RANK_BASE_BYTES)} of "
                         f"host RAM ({gib(RANK_BASE_BYTES)} each before any model) but {gib(avail)} are available: "
                         f"use at most {most:,}, or torchrun across machines")


BYTES_PER_SEQUENCE = 256
"""Host bytes per sequence of a step that every rank holds (its slice, its plan entries): a low estimate,
so only batches that cannot possibly run are refused."""


def check_batch(global_batch_tokens: int, pieces: int, tokens: int, memory: RankMemory) -> None:
    """Every rank describes the whole global batch (its sequences and their plan) in host memory: a
    --global-batch-tokens of 1e11 would build 1e8+ sequences per step on every rank before the first
    forward, silently, for minutes. ``pieces`` and ``tokens``: the corpus cut at --max-seq-len."""
    sequences = global_batch_tokens / max(1.0, tokens / max(1, pieces)) + 1
    need = sequences * BYTES_PER_SEQUENCE
    if need > USABLE_FRACTION * memory.bytes:
        raise ValueError(f"--global-batch-tokens {global_batch_tokens:,}: a step of about {sequences:,.0f} sequences "
                         f"(this corpus cut at --max-seq-len) needs at least {gib(need)} of host RAM on every rank to "
                         f"describe and plan, but {memory.what}: use a smaller --global-batch-tokens (more --steps "
                         "train on the same tokens)")


def check_memory(cost: CostModel, capacity: int, num_ranks: int, memory: RankMemory, model: str) -> None:
    """Model states + activations of ``capacity`` tokens must fit in what one rank has (``memory``).
    The cost model's activations are bf16 (``ACT_BYTES``); a float32/float64 run keeps its own dtype."""
    states = cost.model_state_bytes(num_ranks)
    acts = capacity * cost.activation_bytes_per_token() * DTYPE_BYTES[cost.dtype] / ACT_BYTES
    usable = USABLE_FRACTION * memory.bytes
    if states + acts <= usable:
        return
    hints = ("--zero 1, " if cost.zero == 0 else "") + ("--recompute full, " if cost.recompute == "none" else "")
    raise ValueError(f"{model} does not fit this machine: one rank needs {gib(states)} for parameters, gradients and "
                     f"optimizer states (--zero {cost.zero}, {cost.dtype}) + {gib(acts)} of activations for "
                     f"{capacity:,} tokens, but {memory.what}, of which {USABLE_FRACTION:.0%} is usable: use "
                     f"{hints}a smaller --capacity or --model, fewer --nproc, or more memory")
