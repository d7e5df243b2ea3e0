"""``hdp plan``: lengths (file or synthetic) -> plan file, summary or JSON. No torch."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from hdp.data.synthetic import DISTRIBUTIONS, read_lengths, sample_lengths
from hdp.plan import STRATEGIES, Plan, build_cost_model, make_plan
from hdp.plan.model_config import DEFAULT_MODEL, PRESETS


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    """Where the lengths of a global batch come from (shared with ``hdp simulate``)."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--lengths", metavar="FILE", help="one sequence length per line (# comments allowed)")
    src.add_argument("--dist", choices=DISTRIBUTIONS, default=None, help="synthetic distribution (default byted)")
    p.add_argument("--tokens", type=int, default=32 * 2**20, help="total tokens of a synthetic batch (default 32M)")
    p.add_argument("--max-len", type=int, default=None,
                   help="maximum context length: longest synthetic sequence, and what a static mesh is sized for "
                        "(default 2M for synthetic batches, the longest sequence for a file)")
    p.add_argument("--seed", type=int, default=0)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, choices=list(PRESETS), help=f"model preset (default {DEFAULT_MODEL})")
    p.add_argument("--cost-model", metavar="PROFILE", default=None,
                   help="device profile JSON (default: the shipped H100 SXM 80GB calibration)")


def add_memory_arguments(p: argparse.ArgumentParser) -> None:
    """What the derived capacity and the cost model assume of the runtime (shared with ``hdp simulate``)."""
    p.add_argument("--zero", type=int, choices=(0, 1, 2), default=1,
                   help="optimizer-state sharding the runtime uses (hdp train --zero; default 1)")
    p.add_argument("--recompute", choices=("none", "full"), default="none",
                   help="full: layers keep only their input and recompute in backward (more capacity, "
                        "an extra forward in the cost model; default none)")


def check_memory_arguments(args: argparse.Namespace) -> None:
    if args.recompute == "full" and getattr(args, "offload", False):
        raise ValueError("--recompute full keeps only each layer's input, so offloading has nothing to move: "
                         "drop --offload or use --recompute none")


def load_workload(args: argparse.Namespace) -> tuple[list[int], int | None]:
    """(lengths, max_len) from ``--lengths`` or a synthetic distribution."""
    if args.lengths:
        return read_lengths(args.lengths), args.max_len
    max_len = args.max_len if args.max_len is not None else 2**21
    return sample_lengths(args.dist or "byted", args.tokens, max_len, args.seed), max_len


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_workload_arguments(p)
    add_model_arguments(p)
    p.add_argument("--ranks", type=int, default=1024, help="HDP ranks (default 1024)")
    p.add_argument("--capacity", type=int, default=None,
                   help="tokens per rank per micro-batch (default: derived from device memory and the model)")
    p.add_argument("--strategy", choices=STRATEGIES, default="hdp")
    p.add_argument("--balance", choices=("dp", "pp"), default="dp", help="plain HDP ranks, or pipelines of --stages")
    p.add_argument("--balance-by", choices=("work", "time"), default="work",
                   help="what the scheduler equalises: PLAN_FORMAT's work measure (default) or cost-model time")
    p.add_argument("--stages", type=int, default=1, help="pipeline stages per HDP rank (with --balance pp)")
    p.add_argument("--offload", action="store_true", help="selective activation offloading for long sequences")
    add_memory_arguments(p)
    p.add_argument("--out", metavar="PLAN_JSON", help="write the plan here (hdp.plan/1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")


def summary(plan: Plan, planning_time_s: float) -> dict[str, object]:
    counts = [len(rp.micro_batches) for rp in plan.ranks]
    ranks_by_ring: dict[str, int] = {}
    for size, num in plan.ring_sizes().items():
        ranks_by_ring[str(size)] = size * num
    out: dict[str, object] = {
        "strategy": plan.strategy,
        "num_ranks": plan.num_ranks,
        "capacity_tokens": plan.capacity_tokens,
        "sequences": len(plan.sequences),
        "tokens": plan.total_tokens,
        "planning_time_s": planning_time_s,
        "predicted_step_time_s": plan.predicted_step_time_s,
        "lower_bound_s": plan.lower_bound_s,
        "ratio": plan.predicted_step_time_s / plan.lower_bound_s if plan.lower_bound_s else 1.0,
        "rings": len(plan.rings),
        "max_ring": plan.max_ring,
        "rings_by_size": {str(k): v for k, v in plan.ring_sizes().items()},
        "rank_slots_by_ring_size": ranks_by_ring,
        "micro_batches_min": min(counts),
        "micro_batches_max": max(counts),
        "idle_ranks": sum(1 for c in counts if c == 0),
        "fingerprint": plan.fingerprint,
    }
    for key in ("cp_size", "offload_ranks_saved"):
        if key in plan.extra:
            out[key] = plan.extra[key]
    return out


def print_summary(info: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"hdp plan · {info['strategy']} · {info['num_ranks']:,} ranks · C={info['capacity_tokens']:,}",
              show_header=False)
    t.add_row("sequences / tokens", f"{info['sequences']:,} / {info['tokens']:,}")
    rings = ", ".join(f"{n}×{k}" for k, n in info["rings_by_size"].items()) or "none"  # type: ignore[union-attr]
    t.add_row("rings (count×size)", rings)
    t.add_row("micro-batches per rank", f"{info['micro_batches_min']} – {info['micro_batches_max']}")
    if "cp_size" in info:
        t.add_row("static CP size", str(info["cp_size"]))
    if "offload_ranks_saved" in info:
        t.add_row("ranks saved by offloading", f"{info['offload_ranks_saved']:,}")
    t.add_row("predicted step time", f"{info['predicted_step_time_s']:.3f} s")
    t.add_row("lower bound", f"{info['lower_bound_s']:.3f} s")
    t.add_row("ratio", f"{info['ratio']:.3f}")
    t.add_row("planning time", f"{info['planning_time_s'] * 1e3:.1f} ms")
    Console(stderr=False).print(t)


def write_atomically(path: str, text: str) -> None:
    """Write via a temporary file and rename, so a failure leaves no partial plan behind."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".hdp-plan-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    if args.stages < 1:
        raise ValueError(f"--stages must be >= 1, got {args.stages}")
    if args.balance == "dp" and args.stages != 1:
        raise ValueError("--stages needs --balance pp")
    check_memory_arguments(args)
    lengths, max_len = load_workload(args)
    cost = build_cost_model(args.model, args.cost_model, pp=args.stages, zero=args.zero, recompute=args.recompute)
    if args.ranks < 1:
        raise ValueError(f"--ranks must be >= 1, got {args.ranks}")
    capacity = args.capacity if args.capacity is not None else cost.derived_capacity(args.ranks)
    start = time.perf_counter()
    plan = make_plan(lengths, args.ranks, capacity, cost, strategy=args.strategy, balance=args.balance,
                     offload=args.offload, max_len=max_len, seed=args.seed, balance_by=args.balance_by)
    planning_time = time.perf_counter() - start
    if args.out:
        try:
            write_atomically(args.out, plan.to_json())
        except OSError as e:
            raise ValueError(f"cannot write {args.out!r}: {e.strerror or e}") from None
    info = summary(plan, planning_time)
    if args.json:
        json.dump(info, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_summary(info)
    return 0
