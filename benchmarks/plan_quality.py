"""Plan quality: makespan / lower bound for hdp, static and pow2 on synthetic long-tailed batches.

Both measures are reported: docs/plan-format.md's work measure (what outside validators compute) and the
planner's own cost model (the predicted step time against its bound). Prints one JSON line per
case and a table; ``--quick`` runs a smaller matrix.

    python benchmarks/plan_quality.py            # 64, 1,024 and 12,288 ranks, byted and github
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model, get_strategy, make_plan
from hdp.plan.work import quality


BY = "work"


def case(dist: str, ranks: int, tokens: int, max_len: int, capacity: int, seed: int) -> list[dict]:
    cost = build_cost_model("llama-7b")
    lengths = sample_lengths(dist, tokens, max_len, seed)
    out = []
    for strategy in ("hdp-balance", "static", "pow2"):  # hdp-balance: hdp without offloading
        t0 = time.perf_counter()
        plan = make_plan(lengths, ranks, capacity, cost, get_strategy(strategy).replace(balance_by=BY),
                         max_len=max_len, seed=seed)
        dt = time.perf_counter() - t0
        q = quality(plan, cost.work_coefficient)
        counts = [len(r.micro_batches) for r in plan.ranks]
        out.append({
            "dist": dist, "ranks": ranks, "tokens": tokens, "max_len": max_len, "capacity": capacity,
            "seed": seed, "strategy": strategy, "sequences": len(lengths),
            "work_ratio": q["ratio"], "cost_ratio": plan.predicted_step_time_s / plan.lower_bound_s,
            "predicted_step_time_s": plan.predicted_step_time_s, "lower_bound_s": plan.lower_bound_s,
            "micro_batches_per_rank": sum(counts) / len(counts), "planning_time_s": dt,
        })
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    capacity = 8192
    matrix = [(64, 2**19), (1024, 2**21), (12288, 2**21)]
    if args.quick:
        matrix = [(64, 2**19), (1024, 2**21)]
    rows = []
    for dist in ("byted", "github"):
        for ranks, max_len in matrix:
            for seed in range(args.seeds):
                for row in case(dist, ranks, 32 * 2**20, max_len, capacity, seed):
                    row["machine"] = platform.machine()
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print(f"\n{'dist':7} {'ranks':>6} {'maxlen':>8} {'strategy':8} {'mb/rank':>8} {'work/LB':>8} {'cost/LB':>8} {'plan s':>7}")
    for r in rows:
        print(f"{r['dist']:7} {r['ranks']:>6} {r['max_len']:>8} {r['strategy']:8} {r['micro_batches_per_rank']:>8.1f} "
              f"{r['work_ratio']:>8.3f} {r['cost_ratio']:>8.3f} {r['planning_time_s']:>7.3f}")


if __name__ == "__main__":
    main()
