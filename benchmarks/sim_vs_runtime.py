"""Simulated vs measured step time of ``hdp train`` on local CPU ranks.

Runs ``hdp train`` (4 local CPU processes over gloo by default) with ``--metrics FILE`` (JSONL, one
object per step with ``step_time_s``), then plans the same batches and simulates them with a CPU
device profile measured by ``benchmarks/calibrate_cpu.py``. Prints per-step and mean ratios
(simulated / measured; the first step is warm-up and left out of the mean) and writes JSON.

    python benchmarks/calibrate_cpu.py --model small --threads 1 --out hdp/plan/profiles/cpu-small-1t.json
    PYTHONPATH=. python benchmarks/sim_vs_runtime.py --profile hdp/plan/profiles/cpu-small-1t.json

The train command line is a template (``--train-cmd``) because the runtime's flags may differ; the
placeholders are filled from this script's options. Exit status 3 when ``hdp train --metrics`` is
not available in this checkout (nothing measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model
from hdp.sim.cluster import Cluster
from hdp.sim.step import simulate_step
from hdp.sim.strategies import plan_strategy

TRAIN_CMD = ("{python} -m hdp.cli train --model {model} --nproc {ranks} --dist {dist} --tokens {tokens} "
             "--max-len {max_len} --steps {steps} --seed {seed} --capacity {capacity} --strategy {strategy} "
             "--metrics {metrics}")


def train_available(python: str) -> bool:
    r = subprocess.run([python, "-m", "hdp.cli", "train", "--help"], capture_output=True, text=True)
    return r.returncode == 0 and "--metrics" in r.stdout


def measure(args: argparse.Namespace, metrics: str) -> list[float]:
    cmd = args.train_cmd.format(python=shlex.quote(sys.executable), model=args.model, ranks=args.ranks,
                                dist=args.dist, tokens=args.tokens, max_len=args.max_len, steps=args.steps,
                                seed=args.seed, capacity=args.capacity, strategy=args.strategy, metrics=metrics)
    print("+", cmd, file=sys.stderr)
    subprocess.run(shlex.split(cmd), check=True)
    with open(metrics) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [float(r["step_time_s"]) for r in rows if "step_time_s" in r]


def simulate(args: argparse.Namespace) -> list[float]:
    cost = build_cost_model(args.model, args.profile)
    cluster = Cluster(args.ranks, gpus_per_node=args.ranks, nvlink_gbps=args.link_gbps,
                      nvlink_latency_s=args.link_latency_us * 1e-6)
    out = []
    for step in range(args.steps):
        # The runtime draws step i's batch with seed + i, as hdp simulate --steps does.
        lengths = sample_lengths(args.dist, args.tokens, args.max_len, args.seed + step)
        plan = plan_strategy(args.strategy, lengths, cluster.num_ranks, args.capacity, cost, args.max_len,
                             args.seed + step)
        out.append(simulate_step(plan, cost, cluster).step_time_s)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--profile", default="hdp/plan/profiles/cpu-small-1t.json")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--dist", default="byted")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--capacity", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategy", default="hdp-naive",
                    help="simulator strategy name; the runtime gets the same name")
    ap.add_argument("--link-gbps", type=float, default=2.0, help="gloo loopback bandwidth per rank (GB/s), a guess")
    ap.add_argument("--link-latency-us", type=float, default=50.0)
    ap.add_argument("--train-cmd", default=TRAIN_CMD)
    ap.add_argument("--out", default="benchmarks/results/sim_vs_runtime.json")
    args = ap.parse_args()
    simulated = simulate(args)
    result: dict[str, object] = {"benchmark": "sim_vs_runtime", "config": vars(args), "simulated_step_s": simulated}
    if not train_available(sys.executable):
        result["status"] = "not measured: `hdp train --metrics` is not available in this checkout"
        print(json.dumps(result))
        return 3
    with tempfile.TemporaryDirectory() as d:
        measured = measure(args, os.path.join(d, "metrics.jsonl"))
    n = min(len(measured), len(simulated))
    ratios = [simulated[i] / measured[i] for i in range(n)]
    steady = ratios[1:] or ratios
    result.update({"status": "measured", "measured_step_s": measured, "ratio_sim_over_measured": ratios,
                   "mean_ratio_after_warmup": sum(steady) / len(steady)})
    print(f"{'step':>4} {'simulated s':>12} {'measured s':>11} {'ratio':>6}")
    for i in range(n):
        print(f"{i:>4} {simulated[i]:>12.3f} {measured[i]:>11.3f} {ratios[i]:>6.2f}")
    print(f"mean ratio (steps 1..): {result['mean_ratio_after_warmup']:.2f}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
