"""``hdp simulate``: plan one or more global batches with every strategy and time them on a virtual
cluster (discrete-event model of ``hdp.sim``). No torch."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Callable, Iterator

from hdp.commands.config_file import add_config_arguments
from hdp.commands.flags import (SIMULATE_FLAGS, add_hf_model, add_memory_arguments, add_model_arguments, add_pp,
                                add_ranks, add_topology_arguments, model_from_args, user_error, with_strategy_table)
from hdp.commands.plan import add_workload_arguments, check_tokenizer_flags, check_tokens, data_batches
from hdp.data.synthetic import read_lengths, sample_lengths
from hdp.plan import STRATEGIES, PlanError, build_cost_model
from hdp.plan.cost.model_config import ModelConfig
from hdp.progress import Progress, elapsed
from hdp.sim.cluster import INTER_GBPS, INTER_LATENCY_US, NVLINK_GBPS, NVLINK_LATENCY_US, Cluster
from hdp.sim.compare import simulate
from hdp.sim.noise import Noise, parse_straggler
from hdp.sim.report import format_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_workload_arguments(p)
    add_model_arguments(p)
    add_hf_model(p)
    p.add_argument("--steps", type=int, default=1,
                   help="global batches to simulate; step i uses seed+i (default 1, one step times a strategy; "
                        "hdp train's 20 show a loss going down)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--gpus", type=int, default=None, help="GPUs in the job (default 1024)")
    add_ranks(p, "HDP ranks instead of GPUs: --gpus = N x --tp x --pp (default: from --gpus; hdp plan plans 1024, "
                 "hdp train spawns 4 local processes)", default=None, group=size)
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size of one HDP rank (default 1)")
    add_pp(p, "pipeline stages of one HDP rank (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8,
                   help="GPUs per node: rings are placed by node, steps across nodes use NICs (default 8, an 8-GPU "
                        "node; hdp train defaults to the node it runs on)")
    add_topology_arguments(p, gpus_per_node=False)
    p.add_argument("--nvlink-gbps", type=float, default=NVLINK_GBPS,
                   help=f"NVLink GB/s per GPU per direction (default {NVLINK_GBPS:g}: H100 NVLink4, 900 GB/s bidirectional)")
    p.add_argument("--inter-gbps", type=float, default=INTER_GBPS,
                   help=f"inter-node GB/s per GPU per direction (default {INTER_GBPS:g}: one 400 Gb/s NIC per GPU)")
    p.add_argument("--nvlink-latency-us", type=float, default=NVLINK_LATENCY_US)
    p.add_argument("--inter-latency-us", type=float, default=INTER_LATENCY_US)
    p.add_argument("--capacity", type=int, default=None,
                   help="tokens per HDP rank per micro-batch (default: derived from device memory and the model)")
    p.add_argument("--strategies", default="all",
                   help=f"comma-separated subset of {','.join(STRATEGIES)} (table below), or all (default all)")
    add_memory_arguments(p)
    p.add_argument("--jitter", type=float, default=0.0, metavar="J",
                   help="seeded lognormal noise of sigma J (mean 1) on every kernel: each micro-batch's compute, "
                        "each ring step (a step waits for its slowest member); default 0, none (hdp.sim.noise)")
    p.add_argument("--straggler", default=None, metavar="F:X",
                   help="a seeded fraction F of the GPUs runs every kernel X times slower (default none)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="noise seeds 0..N-1 (of --jitter/--straggler; not the batch's --seed): the table and "
                        "--json give each strategy's mean and worst step time over them (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--plot", metavar="DIR", help="write per-rank timelines and a breakdown chart (PNG) here")
    p.add_argument("--quiet", action="store_true",
                   help="no progress on stderr (default: a bar on a terminal, else one line per strategy and step)")
    add_config_arguments(p)
    with_strategy_table(p)


def parse_strategies(text: str) -> list[str]:
    if text.strip() == "all":
        return list(STRATEGIES)
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError("--strategies is empty; give a comma-separated list or 'all'")
    for s in names:
        if s not in STRATEGIES:
            raise ValueError(f"--strategies: unknown strategy {s!r}; choose from {', '.join(STRATEGIES)} or 'all'")
    return list(dict.fromkeys(names))


def load_batches(args: argparse.Namespace, model: ModelConfig | None = None) -> tuple[list[list[int]], int | None]:
    """One batch per step: a lengths file repeats; ``--data`` gives hdp train's steps 0..--steps-1; a
    synthetic batch is redrawn with seed + step."""
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.lengths:
        lengths = read_lengths(args.lengths)
        return [lengths] * args.steps, args.max_len
    if args.data:
        return data_batches(args, list(range(args.steps)), model)
    check_tokens(args.tokens)
    max_len = args.max_len if args.max_len is not None else 2**21
    dist = args.dist or "byted"
    return [sample_lengths(dist, args.tokens, max_len, args.seed + i) for i in range(args.steps)], max_len


def build(args: argparse.Namespace):
    check_tokenizer_flags(args)
    model = model_from_args(args)
    if args.pp > model.num_layers:
        raise ValueError(f"--pp {args.pp} exceeds {model.name}'s {model.num_layers} layers")
    if args.tp >= 1 and (model.num_heads % args.tp or model.num_kv_heads % args.tp and args.tp % model.num_kv_heads):
        raise ValueError(f"--tp {args.tp} does not divide {model.name}'s {model.num_heads} attention heads")
    gpus = 1024 if args.gpus is None and args.ranks is None else args.gpus
    if gpus is None:
        if args.ranks < 1:
            raise ValueError(f"--ranks must be >= 1, got {args.ranks}")
        gpus = args.ranks * args.tp * args.pp
    try:
        cluster = Cluster(gpus, args.tp, args.pp, args.gpus_per_node, args.nvlink_gbps, args.inter_gbps,
                          args.nvlink_latency_us * 1e-6, args.inter_latency_us * 1e-6)
    except PlanError as e:
        raise user_error(e, SIMULATE_FLAGS) from None
    cost = build_cost_model(model, args.profile, tp=args.tp, pp=args.pp, zero=args.zero, recompute=args.recompute)
    if args.capacity is not None:
        if args.capacity < 1:
            raise ValueError(f"--capacity must be >= 1 token, got {args.capacity}")
        capacity = args.capacity
    else:
        try:
            capacity = cost.derived_capacity(cluster.num_ranks)
        except ValueError as e:
            raise ValueError(f"{e} (--tp/--pp/--profile)") from None
    return cluster, cost, capacity


def run(args: argparse.Namespace) -> int:
    strategies = parse_strategies(args.strategies)
    noise = build_noise(args)
    cluster, cost, capacity = build(args)
    batches, max_len = load_batches(args, cost.model)
    flat_static = "static" in strategies
    cells = len(batches) * (len(strategies) + (flat_static and args.ring_algo != "flat"))
    with _progress(cells, len(batches), args.quiet) as on_plan:
        sim = simulate(batches, cluster, cost, capacity, strategies, max_len, args.seed, on_plan=on_plan,
                       ring_algo=args.ring_algo, flat_static=flat_static, noise=noise, noise_seeds=args.seeds)
    notes = {name: user_error(e, SIMULATE_FLAGS).args[0] for name, e in sim.skipped.items()}
    if not sim.table:
        raise ValueError("no strategy can plan this batch: " + "; ".join(f"{n}: {m}" for n, m in notes.items()))
    title = (f"{cost.model.name} · {cluster.gpus:,} GPUs (tp={cluster.tp}, pp={cluster.pp}, "
             f"{cluster.num_ranks:,} HDP ranks) · C={capacity:,} · {sum(batches[0]):,} tokens · "
             f"{args.ring_algo} rings")
    plots = []
    if args.plot:
        plots = _plots(sim, args.plot, title)
    if args.json:
        out = {
            "model": cost.model.name, "device": cost.device.name, "gpus": cluster.gpus, "tp": cluster.tp,
            "pp": cluster.pp, "num_ranks": cluster.num_ranks, "capacity_tokens": capacity,
            "steps": len(batches), "tokens_per_step": sum(batches[0]), "strategies": sim.table,
            "ring_algo": args.ring_algo, "gpus_per_node": cluster.gpus_per_node,
            "simulation_time_s": sim.simulation_time_s, "plots": plots,
            "jitter": noise.jitter, "straggler": args.straggler, "noise_seeds": args.seeds,
        }
        out["joint_floor_s"] = _joint_floor(batches, cluster, cost, capacity, args.ring_algo, sim.table)
        if sim.static_flat:
            out["static_flat"] = sim.static_flat
        if notes:
            out["skipped"] = notes
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(format_table(sim.table, title, noise.active))
        if sim.static_flat:
            print(f"static with flat rings: {sim.static_flat['step_time_s']:.3f} s (the 'vs flat' baseline)")
        for name, note in notes.items():
            print(f"{name}: skipped, {note}")
        print(f"simulated {len(batches)} step(s) x {len(sim.table)} strategies in {sim.simulation_time_s:.1f} s "
              "(planning included)")
        for p in plots:
            print(f"wrote {p}")
    return 0


def _joint_floor(batches: list[list[int]], cluster: Cluster, cost, capacity: int, ring_algo: str,
                 table: dict[str, dict]) -> float:
    """``hdp.plan.floor.joint_floor`` of each step with the planner's topology, averaged, plus the
    gradient sync (like ``area_floor_s``): no strategy's plan is predicted faster than it."""
    from hdp.plan.floor import joint_floor

    topology = cluster.topology(ring_algo, max(1, cost.model.num_kv_heads // cost.tp))
    floors = [joint_floor(b, cluster.num_ranks, capacity, cost, topology) for b in batches]
    return sum(floors) / len(floors) + next(iter(table.values()))["grad_sync_s"]


def build_noise(args: argparse.Namespace) -> Noise:
    """--jitter, --straggler and --seeds, checked (one line on bad input)."""
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    fraction, factor = parse_straggler(args.straggler)
    return Noise(args.jitter, fraction, factor)


@contextlib.contextmanager
def _progress(cells: int, steps: int, quiet: bool) -> Iterator[Callable[[str, int], None] | None]:
    """``simulate``'s ``on_plan``: each (strategy, step) cell planned and timed advances the progress on
    stderr (hdp.progress: a bar on a terminal, else a flushed line), so stdout and --json stay the
    command's output alone. A skipped strategy's cells never finish; the table says why."""
    if quiet:
        yield None
        return
    start = time.monotonic()
    done = 0
    with Progress("simulate", cells, stream=sys.stderr, transient=True) as bar:
        def on_plan(name: str, step: int) -> None:
            nonlocal done
            done += 1
            bar.update(done, f"{name} step {step + 1}/{steps}",
                       lambda: f"hdp simulate: {name} step {step + 1}/{steps} planned and simulated "
                               f"({done}/{cells}, elapsed {elapsed(time.monotonic() - start)})")

        yield on_plan


def _plots(sim, directory: str, title: str) -> list[str]:
    from hdp.sim.plot import write_plots

    return write_plots(sim.last, sim.table, directory, title)
