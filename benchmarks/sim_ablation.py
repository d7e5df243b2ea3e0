"""Ablation in the simulator: LLaMA-7B, 2M context, 1,024 H100s, 32M-token byted batches.

static -> hdp-naive (dynamic rings) -> hdp-offload (+ selective offloading) -> hdp (+ balance
scheduler), plus pow2 and hdp-balance (scheduler without offloading) for reference. Published
(ByteScale, 2025): 1.59x -> 2.01x -> 3.69x over static.

    PYTHONPATH=. python benchmarks/sim_ablation.py [--steps 3] [--out benchmarks/results/sim_ablation.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model
from hdp.sim.cluster import Cluster
from hdp.sim.compare import simulate
from hdp.sim.report import format_table

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from variants import HDP_UNCAPPED  # noqa: E402

PUBLISHED = {"static": 1.0, "hdp-naive": 1.59, "hdp-offload": 2.01, "hdp": 3.69}
ORDER = ["static", "pow2", "hdp-naive", "hdp-offload", "hdp", HDP_UNCAPPED, "hdp-balance"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--gpus", type=int, default=1024)
    ap.add_argument("--max-len", type=int, default=2**21)
    ap.add_argument("--tokens", type=int, default=32 * 2**20)
    ap.add_argument("--out", default="benchmarks/results/sim_ablation.json")
    args = ap.parse_args()
    cost = build_cost_model("llama-7b")
    cluster = Cluster(args.gpus)
    capacity = cost.derived_capacity(cluster.num_ranks)
    batches = [sample_lengths("byted", args.tokens, args.max_len, s) for s in range(args.steps)]
    sim = simulate(batches, cluster, cost, capacity, ORDER, args.max_len)
    for name, row in sim.table.items():
        row["published_speedup"] = PUBLISHED.get(name)
    title = f"ablation: llama-7b, {args.gpus} GPUs, C={capacity}, 2M max, {args.tokens:,} tokens byted, {args.steps} steps"
    print(format_table(sim.table, title))
    print(f"{'strategy':<12} {'sim speedup':>11} {'published':>9}")
    for name in sim.table:
        pub = PUBLISHED.get(name)
        print(f"{name:<12} {sim.table[name]['speedup_vs_static']:>10.2f}x {'' if pub is None else f'{pub:.2f}x':>9}")
    out = {"benchmark": "sim_ablation", "model": "llama-7b", "gpus": args.gpus, "capacity": capacity,
           "max_len": args.max_len, "tokens": args.tokens, "steps": args.steps, "device": cost.device.name,
           "python": platform.python_version(), "strategies": sim.table,
           "simulation_time_s": sim.simulation_time_s}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
