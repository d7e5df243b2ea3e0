"""Per-step cost of the two-level and bidirectional rings vs the flat ring, on the same plan (CPU, gloo).

Four forked ranks declared as two nodes of two (``--gpus-per-node 2``). Gloo on one machine has no
NIC to save, so this measures what the variants add in bookkeeping (more, smaller messages; two
lanes; the two-level ring's extra gradient hop) and what they lose or win in overlap, not the
bandwidth they save on a cluster (the simulator models that):

1. ``attention``: one ring of 4 (2 nodes x 2) over one sequence, ``hdp_attention`` forward and
   backward, one micro-batch's metadata reused as by a model's layers.
2. ``train_step``: a full ``hdp train`` step (the planner's plan for step 0 of the default data,
   every ring set to each algorithm where it can run it, ``hdp.runtime.attention.ring.select``).

Algorithms are interleaved (flat, two-level, bidirectional, flat, ...) so load on the machine hits
all alike; medians and best times (wall, and CPU time of rank 0) after one warm-up each; ranks are aligned by a barrier outside the timed region.

    python benchmarks/ring_algos.py [--tokens 4096] [--steps 5] [--json-out ring_algos.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hdp.plan.types import MicroBatch, Plan, RankPlan, Ring, Sequence
from hdp.plan.zigzag import member_segments
from hdp.runtime.attention.dispatch import MicroBatchAttention, hdp_attention
from hdp.runtime.config import TrainConfig
from hdp.runtime.launch.spawn import free_port
from hdp.runtime.attention.layout import build_layout
from hdp.runtime.model.source import build_train_model
from hdp.runtime.attention.ring.select import rings_by_algo, with_ring_algo
from hdp.runtime.train.step import build_optimizer, train_step
from hdp.runtime.train.run import Run

WORLD, GPN = 4, 2
ALGOS = ("flat", "two-level", "bidirectional")


def one_ring_plan(length: int) -> Plan:
    """One sequence on a ring of all four ranks (2 nodes x 2), nothing else."""
    ring = Ring(0, 0, tuple(range(WORLD)))
    ranks = tuple(RankPlan(r, (MicroBatch(member_segments(0, length, WORLD, r), (0,), 0.0, length),))
                  for r in range(WORLD))
    return Plan("bench", WORLD, length, (Sequence(0, length),), (ring,), ranks, gpus_per_node=GPN)


def _timed(fn, repeat: int) -> list[list[float]]:
    """[wall seconds, CPU seconds of this process] per call. CPU time counts the work a rank does
    (compute and bookkeeping) but not its waits, so other load on a shared machine disturbs it less."""
    times = []
    for _ in range(repeat):
        dist.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append([time.perf_counter() - start, time.process_time() - cpu])
    return times


def _attention(rank: int, args) -> dict[str, list[list[float]]]:
    base = one_ring_plan(args.tokens)
    g = torch.Generator().manual_seed(rank)
    out: dict[str, list[list[float]]] = {a: [] for a in ALGOS}
    calls = {}
    for algo in ALGOS:
        plan = with_ring_algo(base, algo, GPN)
        batch = MicroBatchAttention(build_layout(plan, rank, 0), timeout_s=120.0)
        n = batch.layout.num_tokens
        q = torch.randn(n, args.heads, args.head_dim, generator=g, requires_grad=True)
        k, v = (torch.randn(n, args.kv_heads, args.head_dim, generator=g, requires_grad=True) for _ in range(2))

        def call(q=q, k=k, v=v, batch=batch) -> None:
            hdp_attention(q, k, v, batch).sum().backward()
        call()  # warm-up (allocates the transfer buffers)
        assert batch.rings[0].ran == algo, (batch.rings[0].ran, algo)
        calls[algo] = call
    for _ in range(args.repeat):
        for algo in ALGOS:
            out[algo] += _timed(calls[algo], 1)
    return out


def _train(rank: int, args) -> tuple[dict[str, list[list[float]]], dict[str, dict[str, int]]]:
    config = TrainConfig(model=args.model, steps=1, progress=False, timeout_s=120.0)
    run = Run.from_config(config, WORLD)
    base = run.plan(0, WORLD)
    batch = run.stream.batch(0)
    state = {}
    for algo in ALGOS:
        plan = with_ring_algo(base, algo, GPN, run.cost.model.num_kv_heads)
        model = build_train_model(run.config, torch.device("cpu"))
        opt = build_optimizer(model, config.lr, zero=1)
        state[algo] = (plan, model, opt)

    def step(algo: str) -> None:
        plan, model, opt = state[algo]
        train_step(model, opt, plan, batch, rank=rank, group=None, device=torch.device("cpu"), timeout_s=120.0)
    out: dict[str, list[list[float]]] = {a: [] for a in ALGOS}
    for algo in ALGOS:
        step(algo)  # warm-up
    for _ in range(args.steps):
        for algo in ALGOS:
            out[algo] += _timed(lambda: step(algo), 1)
    return out, {a: rings_by_algo(state[a][0], run.cost.model.num_kv_heads) for a in ALGOS}


def _rank(rank: int, port: int, args, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    attention = _attention(rank, args)
    train, by_algo = _train(rank, args)
    if rank == 0:
        with open(os.path.join(out_dir, "r.json"), "w") as f:
            json.dump({"attention": attention, "train_step": train, "rings_by_algo": by_algo}, f)
    dist.destroy_process_group()


def summarize(times: dict[str, list[list[float]]]) -> dict[str, dict[str, float]]:
    """Per algorithm: median and best wall time and median CPU time (rank 0), each also as a ratio to flat's."""
    def stats(t: list[list[float]]) -> dict[str, float]:
        wall, cpu = [w for w, _ in t], [c for _, c in t]
        return {"median_s": statistics.median(wall), "min_s": min(wall), "cpu_s": statistics.median(cpu)}
    flat = stats(times["flat"])
    out = {}
    for a, t in times.items():
        r = stats(t)
        out[a] = {**r, "ratio_vs_flat": r["median_s"] / flat["median_s"], "min_ratio_vs_flat": r["min_s"] / flat["min_s"],
                  "cpu_ratio_vs_flat": r["cpu_s"] / flat["cpu_s"], "runs": len(t)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096, help="sequence length of the attention ring (default 4096)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5, help="timed attention calls per algorithm (default 5)")
    p.add_argument("--model", default="tiny", help="model preset of the train step (default tiny)")
    p.add_argument("--steps", type=int, default=5, help="timed train steps per algorithm (default 5)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank, args=(free_port(), args, tmp), nprocs=WORLD, join=True, start_method="fork")
        with open(os.path.join(tmp, "r.json")) as f:
            raw = json.load(f)
    out = {
        "benchmark": "ring_algos", "ranks": WORLD, "gpus_per_node": GPN, "backend": "gloo", "device": "cpu",
        "cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
        "attention": {"tokens": args.tokens, "heads": args.heads, "kv_heads": args.kv_heads,
                      "head_dim": args.head_dim, **summarize(raw["attention"])},
        "train_step": {"model": args.model, "rings_by_algo": raw["rings_by_algo"], **summarize(raw["train_step"])},
    }
    print(json.dumps(out))
    for part in ("attention", "train_step"):
        for algo in ALGOS:
            r = out[part][algo]
            print(f"{part:10s} {algo:13s} median {r['median_s'] * 1e3:9.1f} ms  x{r['ratio_vs_flat']:.3f} vs flat   "
                  f"best {r['min_s'] * 1e3:9.1f} ms  x{r['min_ratio_vs_flat']:.3f}   "
                  f"cpu {r['cpu_s'] * 1e3:9.1f} ms  x{r['cpu_ratio_vs_flat']:.3f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
