"""Simulated vs measured step time of ``hdp train`` on local CPU ranks.

Runs ``hdp train`` (4 local CPU processes over gloo by default) with ``--metrics FILE`` (JSONL, one
object per step with ``step_time_s``), then plans the same batches and simulates them with a CPU
device profile measured by ``benchmarks/calibrate_cpu.py``. Prints per-step and mean ratios
(simulated / measured; the first step is warm-up and left out of the mean) and writes JSON.

    python benchmarks/calibrate_cpu.py --model small --threads 1 --out hdp/plan/profiles/cpu-small-1t.json
    PYTHONPATH=. python benchmarks/sim_vs_runtime.py --profile hdp/plan/profiles/cpu-small-1t.json

The batches are the runtime's own (its data stream, read through ``hdp.runtime.train.run.Run`` in a
subprocess), planned here with the same planner options. ``--runtime-root`` picks the checkout
whose ``hdp train`` runs. Exit status 3 when ``hdp train --metrics`` is not available there.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

from hdp.plan import STRATEGIES, build_cost_model, make_plan
from hdp.sim.cluster import Cluster
from hdp.sim.training_step import simulate_step

LENGTHS_SNIPPET = """
import json, sys
from hdp.runtime.config import TrainConfig
from hdp.runtime.train.run import Run
a = json.loads(sys.argv[1])
run = Run.from_config(TrainConfig(model=a["model"], steps=a["steps"], global_batch_tokens=a["tokens"],
                                  capacity=a["capacity"], max_seq_len=a["max_len"], strategy=a["strategy"],
                                  seed=a["seed"]))
print(json.dumps([list(run.stream.batch(s).lengths) for s in range(a["steps"])]))
"""


def runtime_env(root: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(root) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_available(root: str) -> bool:
    r = subprocess.run([sys.executable, "-m", "hdp.cli", "train", "--help"], capture_output=True, text=True,
                       cwd=root, env=runtime_env(root))
    return r.returncode == 0 and "--metrics" in r.stdout


def batches(args: argparse.Namespace) -> list[list[int]]:
    """The exact per-step lengths the runtime trains on (its own data stream)."""
    spec = {"model": args.model, "steps": args.steps, "tokens": args.tokens, "capacity": args.capacity,
            "max_len": args.max_len, "strategy": args.strategy, "seed": args.seed}
    r = subprocess.run([sys.executable, "-c", LENGTHS_SNIPPET, json.dumps(spec)], capture_output=True, text=True,
                       cwd=args.runtime_root, env=runtime_env(args.runtime_root), check=True)
    return json.loads(r.stdout)


def measure(args: argparse.Namespace, metrics: str) -> list[float]:
    cmd = [sys.executable, "-m", "hdp.cli", "train", "--nproc", str(args.ranks), "--model", args.model,
           "--steps", str(args.steps), "--global-batch-tokens", str(args.tokens), "--capacity", str(args.capacity),
           "--max-seq-len", str(args.max_len), "--strategy", args.strategy, "--seed", str(args.seed),
           "--metrics", metrics, "--no-progress"]
    print("+", shlex.join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=args.runtime_root, env=runtime_env(args.runtime_root))
    with open(metrics) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [float(r["step_time_s"]) for r in rows if "step_time_s" in r]


def simulate(args: argparse.Namespace, lengths_per_step: list[list[int]]) -> list[float]:
    cost = build_cost_model(args.model, args.profile)
    cluster = Cluster(args.ranks, gpus_per_node=args.ranks, nvlink_gbps=args.link_gbps,
                      nvlink_latency_s=args.link_latency_us * 1e-6)
    out = []
    for step, lengths in enumerate(lengths_per_step):
        plan = make_plan(lengths, cluster.num_ranks, args.capacity, cost, args.strategy, max_len=args.max_len,
                         seed=args.seed + step)
        out.append(simulate_step(plan, cost, cluster).step_time_s)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--profile", default="hdp/plan/profiles/cpu-small-1t.json")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=8192, help="--global-batch-tokens of hdp train")
    ap.add_argument("--max-len", type=int, default=2048, help="--max-seq-len of hdp train")
    ap.add_argument("--capacity", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategy", default="hdp", choices=list(STRATEGIES), help="hdp train's --strategy")
    ap.add_argument("--runtime-root", default=".", help="checkout whose hdp train runs (default: this one)")
    ap.add_argument("--link-gbps", type=float, default=2.0, help="gloo loopback bandwidth per rank (GB/s), a guess")
    ap.add_argument("--link-latency-us", type=float, default=50.0)
    ap.add_argument("--out", default="benchmarks/results/sim_vs_runtime.json")
    args = ap.parse_args()
    result: dict[str, object] = {"benchmark": "sim_vs_runtime", "config": vars(args)}
    if not train_available(args.runtime_root):
        result["status"] = f"not measured: `hdp train --metrics` is not available in {args.runtime_root!r}"
        print(json.dumps(result))
        return 3
    simulated = simulate(args, batches(args))
    result["simulated_step_s"] = simulated
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
