"""Planning speed: a 32M-token Byted-like global batch on 12,288 and 1,024 ranks, C = 8,192.

Times ``make_plan`` alone (no I/O), best of ``--repeat`` runs, for every strategy; the ratio column
compares each strategy with ``hdp`` in the same run. Target: hdp under 1 s at 12,288 ranks.

    python benchmarks/plan_speed.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model, make_plan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32 * 2**20)
    args = ap.parse_args()
    cost = build_cost_model("llama-7b")
    lengths = sample_lengths("byted", args.tokens, 2**21, seed=0)
    rows = []
    for ranks in (12288, 1024):
        best: dict[str, float] = {}
        for strategy in ("hdp-balance", "hdp-naive", "pow2", "static"):  # hdp-balance: hdp without offloading
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                make_plan(lengths, ranks, 8192, cost, strategy, max_len=2**21)
                times.append(time.perf_counter() - t0)
            best[strategy] = min(times)
        for strategy, t in best.items():
            row = {"ranks": ranks, "strategy": strategy, "sequences": len(lengths), "tokens": args.tokens,
                   "planning_time_s": t, "ratio_vs_hdp": t / best["hdp-balance"], "python": platform.python_version(),
                   "machine": platform.machine()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'ranks':>6} {'strategy':10} {'plan s':>8} {'vs hdp':>7}")
    for r in rows:
        print(f"{r['ranks']:>6} {r['strategy']:10} {r['planning_time_s']:>8.3f} {r['ratio_vs_hdp']:>7.2f}")


if __name__ == "__main__":
    main()
