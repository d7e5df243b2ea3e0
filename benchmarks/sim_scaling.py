"""Scaling in the simulator: 7B/13B/30B/70B and Mixtral x 256K/512K/1M/2M context x byted/github, vs static and pow2.

Cluster per model (our choice, in the spirit of production setups; ByteScale's exact meshes are not
all published; ByteScale §5.1 fixes tp and pp by model size): 7B tp=1 on 1,024 GPUs, 13B tp=2 on
2,048, 30B tp=4 on 4,096 (HDP ranks = GPUs / (tp x pp) = 1,024); 70B and both Mixtrals tp=8 pp=4
on 8,192 (256 HDP ranks: ~128K tokens per pipeline of the 32M batch, ~7 micro-batches), and 70B also
on 32,768 (1,024 HDP ranks: ~32K tokens, under 2 micro-batches per pipeline, so the 1F1B bubble of
pp=4 dominates every strategy). Model states are the runtime's layout (``CostModel.model_state_bytes``: the
fullest stage and TP rank). 32M-token global batches; H100 profile; 1 step per cell.
Published maxima: 7.89x (github), 4.26x (byted) over static.

    PYTHONPATH=. python benchmarks/sim_scaling.py [--out benchmarks/results/sim_scaling.json]
    PYTHONPATH=. python benchmarks/sim_scaling.py --models llama-70b --keep   # rerun some models only

``--keep`` keeps the rows of the models not run from the existing ``--out`` file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model
from hdp.sim.cluster import Cluster
from hdp.sim.compare import simulate

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from variants import HDP_UNCAPPED  # noqa: E402

MODELS = [("llama-7b", 1, 1, 1024), ("llama-13b", 2, 1, 2048), ("llama-30b", 4, 1, 4096), ("llama-70b", 8, 4, 8192),
          ("llama-70b", 8, 4, 32768), ("mixtral-8x7b", 8, 4, 8192), ("mixtral-8x22b", 8, 4, 8192)]
CONTEXTS = [2**18, 2**19, 2**20, 2**21]
DISTS = ["byted", "github"]
STRATEGIES = ["static", "pow2", "hdp", HDP_UNCAPPED, "hdp-balance"]
NAMES = [s if isinstance(s, str) else s.name for s in STRATEGIES]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32 * 2**20)
    ap.add_argument("--models", default=",".join(m[0] for m in MODELS))
    ap.add_argument("--contexts", default=",".join(str(c) for c in CONTEXTS), help="max lengths, comma-separated")
    ap.add_argument("--out", default="benchmarks/results/sim_scaling.json")
    ap.add_argument("--keep", action="store_true", help="keep --out's rows of the models not run")
    args = ap.parse_args()
    wanted = args.models.split(",")
    unknown = sorted(set(wanted) - {m[0] for m in MODELS})
    if unknown:
        print(f"sim_scaling: unknown --models {', '.join(unknown)}; choose from {', '.join(m[0] for m in MODELS)}",
              file=sys.stderr)
        return 2
    contexts = [int(c) for c in args.contexts.split(",")]
    rows = []
    t0 = time.perf_counter()
    print(f"{'model':<13} {'gpus':>6} {'tp':>2} {'pp':>2} {'ctx':>5} {'dist':<6} " + " ".join(f"{s:>12}" for s in NAMES)
          + "  (speedup vs static; step s of static)")
    for model, tp, pp, gpus in MODELS:
        if model not in wanted:
            continue
        cost = build_cost_model(model, tp=tp, pp=pp)
        cluster = Cluster(gpus, tp, pp)
        capacity = cost.derived_capacity(cluster.num_ranks)
        for dist in DISTS:
            for ctx in contexts:
                lengths = sample_lengths(dist, args.tokens, ctx, 0)
                sim = simulate([lengths], cluster, cost, capacity, STRATEGIES, ctx)
                row = {"model": model, "gpus": gpus, "tp": tp, "pp": pp, "capacity": capacity, "max_len": ctx,
                       "dist": dist, "strategies": sim.table, "simulation_time_s": sim.simulation_time_s}
                rows.append(row)
                sp = " ".join(f"{sim.table[s]['speedup_vs_static']:>11.2f}x" for s in NAMES)
                print(f"{model:<13} {gpus:>6} {tp:>2} {pp:>2} {ctx // 1024:>4}K {dist:<6} {sp}  ({sim.table['static']['step_time_s']:.1f} s)",
                      flush=True)
    if args.keep and os.path.exists(args.out):
        with open(args.out) as f:
            kept = [r for r in json.load(f)["rows"] if r["model"] not in wanted]
        order = [(m[0], m[3]) for m in MODELS]
        kept = [r for r in kept if (r["model"], r["gpus"]) in order]  # a cluster no longer in MODELS goes
        rows = sorted(kept + rows, key=lambda r: (order.index((r["model"], r["gpus"])), DISTS.index(r["dist"]),
                                                  r["max_len"]))
    best = {d: max((r["strategies"]["hdp"]["speedup_vs_static"], r["model"], r["max_len"]) for r in rows if r["dist"] == d)
            for d in DISTS if any(r["dist"] == d for r in rows)}
    print("max hdp speedup vs static:", {d: f"{v[0]:.2f}x ({v[1]}, {v[2] // 1024}K)" for d, v in best.items()},
          "published: github 7.89x, byted 4.26x")
    out = {"benchmark": "sim_scaling", "tokens": args.tokens, "rows": rows, "wall_s": time.perf_counter() - t0}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    json.dump({"max_hdp_speedup": best, "wall_s": out["wall_s"]}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
