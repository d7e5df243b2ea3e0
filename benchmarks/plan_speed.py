"""Planning speed: a Byted-like global batch of 32K tokens per rank (32M on 1,024 ranks, 512M on
16,384), LLaMA-7B, capacity derived from the model, two-level rings on 8-GPU nodes (hdp plan's
defaults), for every strategy including ``auto``.

Times ``make_plan`` alone (no I/O), best of ``--repeat`` runs, as wall and CPU (process) time: on
a shared machine the CPU time is the planner's own cost, the wall time what a user waits. The
ratio column compares each strategy with ``hdp`` in the same run. Issue 21's targets: ``auto``
under 0.5 s at 1,024 ranks and under 5 s at 16,384; ``static`` under 5 s at 4,096 and 20 s at 16,384.

    PYTHONPATH=. python benchmarks/plan_speed.py [--ranks 1024,4096,16384] [--strategies auto,hdp,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model, make_plan
from hdp.plan.cost.topology import Topology

STRATEGIES = "hdp,auto,hdp-wide,hdp-balance,pow2,static"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--tokens-per-rank", type=int, default=32 * 2**10)
    ap.add_argument("--ranks", default="1024,4096,16384")
    ap.add_argument("--strategies", default=STRATEGIES)
    ap.add_argument("--out", default="benchmarks/results/plan_speed.json")
    args = ap.parse_args()
    rows = []
    for ranks in [int(r) for r in args.ranks.split(",")]:
        cost = build_cost_model("llama-7b")  # a fresh cost model per row: its seq_time memo starts empty
        lengths = sample_lengths("byted", args.tokens_per_rank * ranks, 2**21, seed=0)
        capacity = cost.derived_capacity(ranks)
        topology = Topology(8, "two-level", kv_heads=cost.model.num_kv_heads)
        best: dict[str, tuple[float, float, str]] = {}
        for strategy in args.strategies.split(","):
            times = []
            for _ in range(args.repeat):
                fresh = build_cost_model("llama-7b")
                w0, c0 = time.perf_counter(), time.process_time()
                plan = make_plan(lengths, ranks, capacity, fresh, strategy, max_len=2**21, topology=topology)
                times.append((time.perf_counter() - w0, time.process_time() - c0, plan.extra.get("chosen", "")))
                del plan  # freeing a static plan's millions of segments is not the next row's planning
            best[strategy] = min(times)
            row = {"ranks": ranks, "strategy": strategy, "sequences": len(lengths), "tokens": sum(lengths),
                   "capacity": capacity, "planning_wall_s": best[strategy][0], "planning_cpu_s": best[strategy][1],
                   "chosen": best[strategy][2], "load_average": os.getloadavg()[0],
                   "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
            if "hdp" in best:
                row["cpu_ratio_vs_hdp"] = best[strategy][1] / best["hdp"][1]
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\n{'ranks':>6} {'strategy':12} {'wall s':>8} {'cpu s':>8} {'load':>5}  chosen")
    for r in rows:
        print(f"{r['ranks']:>6} {r['strategy']:12} {r['planning_wall_s']:>8.2f} {r['planning_cpu_s']:>8.2f} "
              f"{r['load_average']:>5.1f}  {r['chosen']}")


if __name__ == "__main__":
    main()
