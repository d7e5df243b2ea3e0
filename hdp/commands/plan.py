"""``hdp plan``: lengths (file or synthetic) -> plan file, summary or JSON. No torch."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from hdp.commands.config_file import add_config_arguments
from hdp.commands.flags import (PLAN_FLAGS, add_global_batch_tokens, add_hf_model, add_max_len, add_memory_arguments,
                                add_model_arguments, add_pp, add_ranks, add_topology_arguments, check_memory_arguments,
                                model_from_args, user_error, with_strategy_table)
from hdp.data.synthetic import DISTRIBUTIONS, read_lengths, sample_lengths
from hdp.plan import STRATEGIES, Plan, PlanError, build_cost_model, get_strategy, make_plan
from hdp.plan.cost.model_config import ModelConfig
from hdp.plan.planner import check_batch_tokens


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    """Where the lengths of a global batch come from (shared with ``hdp simulate``)."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--lengths", metavar="FILE", help="one sequence length per line (# comments allowed)")
    src.add_argument("--dist", choices=DISTRIBUTIONS, default=None, help="synthetic distribution (default byted)")
    src.add_argument("--data", default=None, metavar="PATH",
                     help="the global batches hdp train --data PATH would train on (any source it takes: JSONL, "
                          "Parquet, text, a store from 'hdp data prepare'); give hdp train's --global-batch-tokens, "
                          "--max-len, --seed and --tokenizer to plan its batches")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="with --data: a tokenizer.json or local Hugging Face tokenizer directory (default: byte-level)")
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="with --data: field holding the text in JSONL/Parquet/datasets inputs (default text)")
    add_global_batch_tokens(p, "tokens of one synthetic global batch (default 32M, a production step; hdp train's "
                               "4,096 fits a CPU run)", default=32 * 2**20, dest="tokens")
    add_max_len(p, "maximum context length: longest synthetic sequence, and what a static mesh is sized for "
                   "(default 2M for synthetic batches, a long-context production batch, and the longest sequence "
                   "for a file; hdp train's 1,024 keeps a CPU run short)")
    p.add_argument("--seed", type=int, default=0)


def load_workload(args: argparse.Namespace, model: ModelConfig | None = None) -> tuple[list[int], int | None]:
    """(lengths, max_len) from ``--lengths``, ``--data`` (batch ``--step``) or a synthetic distribution."""
    if args.lengths:
        return read_lengths(args.lengths), args.max_len
    if args.data:
        batches, max_len = data_batches(args, [args.step], model)
        return batches[0], max_len
    check_tokens(args.tokens)
    max_len = args.max_len if args.max_len is not None else 2**21
    return sample_lengths(args.dist or "byted", args.tokens, max_len, args.seed), max_len


def data_batches(args: argparse.Namespace, steps: list[int], model: ModelConfig | None) -> tuple[list[list[int]], int]:
    """The lengths of ``steps`` of ``hdp train --data``: its loader and ``BatchStream`` (seeded by
    ``--seed``, documents cut at ``--max-len``), so a plan here is the plan train makes; ``model``'s
    embedding rows must hold the tokenizer's ids, as train checks."""
    from hdp.data.batches import BatchStream
    from hdp.data.load import load_training_data
    from hdp.data.tokenizer import check_vocab

    check_tokens(args.tokens)
    if min(steps) < 0:
        raise ValueError(f"--step must be >= 0, got {min(steps)}")
    max_len = args.max_len if args.max_len is not None else 2**21
    data = load_training_data(args.data, args.tokenizer, args.text_field)
    if model is not None:
        check_vocab(data.tokenizer, data.vocab_size, model.vocab_size, args.hf_model or args.model)
    stream = BatchStream(data.corpus, args.tokens, max_len, args.seed)
    return [stream.batch(s).lengths for s in steps], max_len


def check_tokenizer_flags(args: argparse.Namespace) -> None:
    if not args.data and (args.tokenizer is not None or args.text_field != "text"):
        raise ValueError("--tokenizer and --text-field read --data: give --data PATH")


def check_tokens(tokens: int) -> None:
    try:
        check_batch_tokens(tokens)
    except PlanError as e:
        raise ValueError(f"--tokens: {e}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_workload_arguments(p)
    add_model_arguments(p)
    add_hf_model(p)
    p.add_argument("--step", type=int, default=0, metavar="S",
                   help="with --data: plan the batch of step S (default 0, the first)")
    add_ranks(p, "HDP ranks (default 1024, a production cluster; hdp train spawns 4 local processes)", default=1024)
    p.add_argument("--capacity", type=int, default=None,
                   help="tokens per rank per micro-batch (default: derived from device memory and the model)")
    p.add_argument("--strategy", choices=list(STRATEGIES), default="auto",
                   help="planner preset (table below; default auto, the fastest by the estimate; hdp train "
                        "defaults to hdp, one planner per step)")
    add_pp(p, "pipeline stages per HDP rank: every rank is a 1F1B pipeline when P > 1 (default 1)")
    p.add_argument("--tp", type=int, default=1, metavar="T",
                   help="tensor-parallel size of one HDP rank: its FLOPs, activations and model states are split T "
                        "ways; --ranks counts HDP ranks, each of T x P GPUs (default 1)")
    p.add_argument("--balance", choices=("dp", "pp"), default=None,
                   help="kept for old scripts: the scheduler balances pipelines exactly when --pp > 1")
    p.add_argument("--balance-by", choices=("work", "time"), default="work",
                   help="what the scheduler equalises: docs/plan-format.md's work measure (default) or cost-model time")
    p.add_argument("--offload", action="store_true",
                   help="kept for old scripts: hdp-naive -> hdp-offload, hdp-balance -> hdp (hdp already offloads)")
    add_memory_arguments(p)
    add_topology_arguments(p)
    p.add_argument("--out", metavar="PLAN_JSON", help="write the plan here (hdp.plan/1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    add_config_arguments(p)
    with_strategy_table(p)


def summary(plan: Plan, planning_time_s: float, area_floor_s: float | None = None) -> dict[str, object]:
    """The summary ``hdp plan`` prints; ``area_floor_s`` (``hdp.plan.estimate.area_floor``) bounds
    plans of every strategy, where ``lower_bound_s`` bounds fewest-ranks plans only."""
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
        **({"area_floor_s": area_floor_s} if area_floor_s is not None else {}),
        "rings": len(plan.rings),
        "max_ring": plan.max_ring,
        "rings_by_size": {str(k): v for k, v in plan.ring_sizes().items()},
        "rings_by_algo": _rings_by_algo(plan),
        "rank_slots_by_ring_size": ranks_by_ring,
        "micro_batches_min": min(counts),
        "micro_batches_max": max(counts),
        "idle_ranks": sum(1 for c in counts if c == 0),
        "fingerprint": plan.fingerprint,
    }
    for key in ("cp_size", "offload_ranks_saved", "chosen", "candidates", "candidate_bounds", "candidates_skipped"):
        if key in plan.extra:
            out[key] = plan.extra[key]
    return out


def _rings_by_algo(plan: Plan) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in plan.rings:
        out[r.algo] = out.get(r.algo, 0) + 1
    return dict(sorted(out.items()))


def print_summary(info: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"hdp plan · {info['strategy']} · {info['num_ranks']:,} ranks · C={info['capacity_tokens']:,}",
              show_header=False)
    t.add_row("sequences / tokens", f"{info['sequences']:,} / {info['tokens']:,}")
    rings = ", ".join(f"{n}×{k}" for k, n in info["rings_by_size"].items()) or "none"  # type: ignore[union-attr]
    t.add_row("rings (count×size)", rings)
    t.add_row("ring algorithms", ", ".join(f"{n}×{a}" for a, n in info["rings_by_algo"].items()) or "none")  # type: ignore[union-attr]
    t.add_row("micro-batches per rank", f"{info['micro_batches_min']} – {info['micro_batches_max']}")
    if "cp_size" in info:
        t.add_row("static CP size", str(info["cp_size"]))
    if "offload_ranks_saved" in info:
        t.add_row("ranks saved by offloading", f"{info['offload_ranks_saved']:,}")
    if "chosen" in info:  # auto: the candidates' predicted times say why it won
        times = ", ".join(f"{n} {secs:.3f} s" for n, secs in info["candidates"].items())  # type: ignore[union-attr]
        t.add_row("chosen (auto)", f"{info['chosen']} of {times}")
    t.add_row("predicted step time", f"{info['predicted_step_time_s']:.3f} s")
    t.add_row("lower bound (fewest ranks, no offload)", f"{info['lower_bound_s']:.3f} s")
    t.add_row("ratio", f"{info['ratio']:.3f}")
    if "area_floor_s" in info:
        t.add_row("area floor (any strategy)", f"{info['area_floor_s']:.3f} s")
    t.add_row("planning time", f"{info['planning_time_s'] * 1e3:.1f} ms")
    Console(stderr=False).print(t)


def write_atomically(path: str, text: str) -> None:
    """Write via a temporary file and rename, so a failure leaves no partial plan behind."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".hdp-plan-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plan is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run(args: argparse.Namespace) -> int:
    if args.pp < 1 or args.tp < 1:
        raise ValueError(f"--tp and --pp must be >= 1, got {args.tp} and {args.pp}")
    if args.balance == "dp" and args.pp != 1:
        raise ValueError("--balance dp contradicts --pp > 1: drop --balance (pipelines are balanced when --pp > 1)")
    strategy = get_strategy(args.strategy, offload=args.offload).replace(balance_by=args.balance_by)
    check_memory_arguments(args)
    check_tokenizer_flags(args)
    model = model_from_args(args)
    lengths, max_len = load_workload(args, model)
    cost = build_cost_model(model, args.profile, tp=args.tp, pp=args.pp, zero=args.zero, recompute=args.recompute)
    if cost.model.num_heads % args.tp:
        raise ValueError(f"--tp {args.tp} does not divide {cost.model.name}'s {cost.model.num_heads} attention heads")
    if args.ranks < 1:
        raise ValueError(f"--ranks must be >= 1, got {args.ranks}")
    capacity = args.capacity if args.capacity is not None else cost.derived_capacity(args.ranks)
    if args.gpus_per_node < 1:
        raise ValueError(f"--gpus-per-node must be >= 1, got {args.gpus_per_node}")
    from hdp.plan.estimate import area_floor
    from hdp.plan.floor import joint_floor
    from hdp.plan.cost.topology import Topology

    topology = Topology(max(1, args.gpus_per_node // (args.tp * args.pp)), args.ring_algo, kv_heads=cost.model.num_kv_heads)
    start = time.perf_counter()
    try:
        plan = make_plan(lengths, args.ranks, capacity, cost, strategy, max_len=max_len, seed=args.seed,
                         topology=topology)
    except PlanError as e:
        raise user_error(e, PLAN_FLAGS) from None
    planning_time = time.perf_counter() - start
    if args.out:
        try:
            write_atomically(args.out, plan.to_json())
        except OSError as e:
            raise ValueError(f"cannot write {args.out!r}: {e.strerror or e}") from None
    info = summary(plan, planning_time, area_floor(lengths, args.ranks, capacity, cost))
    # The communication-aware bound of every strategy (docs/plan-format.md, "What the bounds cover").
    info["joint_floor_s"] = joint_floor(lengths, args.ranks, capacity, cost, topology, plan.predicted_step_time_s)
    if args.json:
        json.dump(info, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_summary(info)
    return 0
