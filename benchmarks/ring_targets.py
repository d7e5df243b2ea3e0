"""Issue 12's targets, side by side in one run: LLaMA-7B, 2M context, byted and github batches,
every strategy planned and simulated with each ring algorithm (flat, two-level, bidirectional).

* 1,024 GPUs (32M tokens): static, pow2, hdp and hdp-wide with every ring algorithm; each hdp
  row's gap to the lower bound (fewest ranks, docs/plan-format.md) and to the area floor (below),
  its speedup over static with the same algorithm and over a flat-ring static, and over pow2 with
  the same algorithm.
* 4,096 and 16,384 GPUs (tokens scaled with the GPUs): pow2, hdp and hdp-wide with the two-level
  ring (static too with --static-at-scale; its planner is slow there), and the wall time of
  planning + simulating each (target < 60 s).

The area floor (``hdp.plan.estimate.area_floor``, ``area_floor_s`` in ``hdp simulate --json``) is
a bound for every strategy; the plan's lower bound covers fewest-ranks plans only, so pow2 and
hdp-wide can fall below it.

    PYTHONPATH=. python benchmarks/ring_targets.py [--scale 4096,16384] [--out benchmarks/results/ring_targets.json]
    PYTHONPATH=. python benchmarks/ring_targets.py --seeds 5 --algos two-level --scale '' \
        --out benchmarks/results/ring_targets_auto_1024.json   # auto vs pow2/static, min-max over seeds
    PYTHONPATH=. python benchmarks/ring_targets.py --model llama-70b --tp 8 --gpus 8192 --algos two-level \
        --scale '' --out benchmarks/results/ring_targets_70b.json
    PYTHONPATH=. python benchmarks/ring_targets.py --seeds 5 --algos two-level --scale 4096 --jitter 0.1 \
        --noise-seeds 3 --out benchmarks/results/ring_targets_jitter.json   # every kernel noisy (hdp.sim.noise)

With ``--jitter J`` every plan is timed under ``--noise-seeds`` seeds of kernel noise and each row's
``step_time_s`` is the mean over them (``step_time_worst_s`` the worst, ``step_time_clean_s`` the
same plan without noise: ``auto_ranges_clean``); the plans are the same as without --jitter.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model
from hdp.plan.floor import joint_floor
from hdp.sim.cluster import Cluster
from hdp.sim.compare import simulate
from hdp.sim.noise import Noise
from hdp.sim.training_step import grad_sync_time

ALGOS = ["flat", "two-level", "bidirectional"]
KEYS = ("step_time_s", "lower_bound_s", "gap_to_lower_bound", "area_floor_s", "gap_to_area_floor", "exposed_comm_s",
        "max_ring", "rings")


def row(table: dict, name: str) -> dict:
    return {k: table[name][k] for k in KEYS} if name in table else {}


HDP_ROWS = ("hdp", "hdp-wide", "auto")


def run_cell(gpus: int, dist: str, strategies: list[str], algos: list[str], tokens_per_1024: int,
             model: str = "llama-7b", tp: int = 1, seed: int = 0, noise: Noise | None = None,
             noise_seeds: int = 1) -> dict:
    """One batch (tokens scale with the HDP ranks, gpus / tp), every strategy with every algorithm."""
    cost = build_cost_model(model, tp=tp)
    cluster = Cluster(gpus, tp)
    capacity = cost.derived_capacity(cluster.num_ranks)
    lengths = sample_lengths(dist, tokens_per_1024 * cluster.num_ranks // 1024, 2**21, seed)
    out: dict = {"gpus": gpus, "dist": dist, "seed": seed, "capacity": capacity, "tokens": sum(lengths),
                 "by_algo": {}}
    for algo in algos:
        cell = {}
        for s in strategies:
            t0 = time.perf_counter()
            sim = simulate([lengths], cluster, cost, capacity, [s], 2**21, seed, ring_algo=algo, noise=noise,
                           noise_seeds=noise_seeds)
            extra = ({k: sim.table[s][k] for k in ("step_time_worst_s", "step_time_clean_s")}
                     if noise and s in sim.table else {})
            cell[s] = row(sim.table, s) | extra | {"wall_s": time.perf_counter() - t0}
        out["by_algo"][algo] = cell
        # The communication-aware floor of every plan (hdp.plan.floor), plus the gradient sync as in area_floor_s.
        topology = cluster.topology(algo, max(1, cost.model.num_kv_heads // cost.tp))
        out.setdefault("joint_floor_s", {})[algo] = (joint_floor(lengths, cluster.num_ranks, capacity, cost, topology)
                                                     + grad_sync_time(cost, cluster))
    return out


def report(cell: dict, rows: list[str] | tuple[str, ...] = HDP_ROWS) -> list[str]:
    lines = []
    flat_static = cell["by_algo"].get("flat", {}).get("static", {}).get("step_time_s")
    for algo, c in cell["by_algo"].items():
        for name in rows:
            h = c[name]
            parts = [f"{cell['gpus']:>6} {cell['dist']:<6} s{cell['seed']} {algo:<10} {name:<8} {h['step_time_s']:7.2f} s "
                     f"gap {h['gap_to_lower_bound']:.3f}x, {h['gap_to_area_floor']:.3f}x floor "
                     f"(wall {h['wall_s']:.1f} s)"]
            if c.get("static", {}).get("step_time_s"):
                parts.append(f"vs static same algo {c['static']['step_time_s'] / h['step_time_s']:.2f}x")
            if flat_static:
                parts.append(f"vs flat static {flat_static / h['step_time_s']:.2f}x")
            if c.get("pow2", {}).get("step_time_s"):
                parts.append(f"vs pow2 same algo {c['pow2']['step_time_s'] / h['step_time_s']:.2f}x")
            lines.append(" · ".join(parts))
        if "pow2" in c:
            lines.append(f"{'':>21}{'pow2':<9}{c['pow2']['step_time_s']:7.2f} s "
                         f"{c['pow2']['gap_to_area_floor']:.3f}x floor (wall {c['pow2']['wall_s']:.1f} s)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32 * 2**20, help="tokens per 1,024 GPUs (default 32M)")
    ap.add_argument("--dists", default="byted,github")
    ap.add_argument("--scale", default="4096,16384", help="larger GPU counts ('' for none)")
    ap.add_argument("--static-at-scale", action="store_true")
    ap.add_argument("--model", default="llama-7b", help="e.g. llama-70b with --tp 8 --gpus 8192")
    ap.add_argument("--tp", type=int, default=1, help="GPUs per HDP rank (tokens scale with gpus / tp)")
    ap.add_argument("--gpus", type=int, default=1024, help="the first cells' GPUs (every strategy and algorithm)")
    ap.add_argument("--algos", default=",".join(ALGOS), help="ring algorithms of the first cells")
    ap.add_argument("--seeds", type=int, default=1, help="batches per cell: seeds 0..N-1 (default 1)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds S..S+N-1 instead (split a long run)")
    ap.add_argument("--rows", default=",".join(HDP_ROWS), help=f"hdp rows beside static and pow2 (default "
                    f"{','.join(HDP_ROWS)}; auto alone for the auto claims)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="write --out from these runs' cells (split seeds)")
    ap.add_argument("--jitter", type=float, default=0.0, help="lognormal kernel noise sigma (default 0, none)")
    ap.add_argument("--noise-seeds", type=int, default=3, help="noise seeds per plan with --jitter (default 3)")
    ap.add_argument("--out", default="benchmarks/results/ring_targets.json")
    args = ap.parse_args()
    noise = Noise(args.jitter) if args.jitter > 0 else None
    timing = {"noise": noise, "noise_seeds": args.noise_seeds}
    rows = args.rows.split(",")
    cells = []
    if args.merge:
        runs = [json.load(open(path)) for path in args.merge]
        cells = [c for r in runs for c in r["cells"]]
        args.seeds = len({c["seed"] for c in cells})
    for seed in range(args.first_seed, args.first_seed + args.seeds) if not args.merge else ():
        for dist in args.dists.split(","):
            cells.append(run_cell(args.gpus, dist, ["static", "pow2", *rows], args.algos.split(","), args.tokens,
                                  args.model, args.tp, seed, **timing))
            print("\n".join(report(cells[-1], rows)), flush=True)
        for gpus in [int(g) for g in args.scale.split(",") if g]:
            for dist in args.dists.split(","):
                strategies = (["static"] if args.static_at_scale else []) + ["pow2", *rows]
                cells.append(run_cell(gpus, dist, strategies, ["two-level"], args.tokens, args.model, args.tp, seed,
                                      **timing))
                print("\n".join(report(cells[-1], rows)), flush=True)
    summary = auto_ranges(cells)
    print("\n".join(summary["lines"]))
    if noise:
        clean = auto_ranges(cells, "step_time_clean_s")
        print("without noise (the same plans):\n" + "\n".join(clean["lines"]))
    with open(args.out, "w") as f:
        extra = ({"jitter": args.jitter, "noise_seeds": args.noise_seeds, "auto_ranges_clean": clean["ranges"]}
                 if noise else {})
        json.dump({"model": args.model, "tp": args.tp, "max_len": 2**21, "seeds": args.seeds, **extra, "cells": cells,
                   "auto_ranges": summary["ranges"]}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


def auto_ranges(cells: list[dict], key: str = "step_time_s") -> dict:
    """Per (GPUs, distribution, algorithm): min-max over seeds of auto's simulated speedup over pow2
    and static with the same ring algorithm, and its geometric mean over pow2, and auto's step over
    the joint floor (``auto/joint_floor``, hdp.plan.floor, + sync); ``key``: which step
    time (``step_time_clean_s``: the noiseless one of a --jitter run)."""
    groups: dict[str, dict[str, list[float]]] = {}
    for cell in cells:
        for algo, c in cell["by_algo"].items():
            if key not in c.get("auto", {}):
                continue
            g = groups.setdefault(f"{cell['gpus']} {cell['dist']} {algo}", {})
            for base in ("pow2", "static", "hdp"):
                if c.get(base, {}).get(key):
                    g.setdefault(base, []).append(c[base][key] / c["auto"][key])
            if algo in cell.get("joint_floor_s", {}):  # below 1 where the simulator times a plan under the estimate
                g.setdefault("auto/joint_floor", []).append(c["auto"][key] / cell["joint_floor_s"][algo])
    lines, ranges = [], {}
    for key, by in groups.items():
        ranges[key] = {base: {"min": min(v), "max": max(v), "geomean": math.prod(v) ** (1 / len(v)), "n": len(v)}
                       for base, v in by.items()}
        lines.append(f"{key}: auto vs " + ", ".join(
            f"{b} {r['min']:.3f}-{r['max']:.3f}x (geomean {r['geomean']:.3f}, {r['n']} seeds)" for b, r in ranges[key].items()))
    return {"lines": lines, "ranges": ranges}


if __name__ == "__main__":
    raise SystemExit(main())
