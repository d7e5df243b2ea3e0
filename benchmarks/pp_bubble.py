"""Measured vs simulated pipeline bubble of ``hdp train --pp P`` on local CPU ranks.

Runs ``hdp train --pp P --nproc N`` (gloo, ``--metrics``), reads each step's measured ``pp_bubble``
(the stages' receive waits over their forward-backward seconds) and the planner's
``pp_bubble_predicted``, rebuilds the very plan each step trained (the runtime's own data stream and
planner, ``hdp.runtime.train.run.Run``) and runs it through the simulator's 1F1B
(``hdp.sim.training_step.simulate_step``: per HDP rank, ``one_f_one_b`` over its micro-batches with
stage-to-stage sends). The simulated bubble is the pipelines' 1F1B idle over their busy time
(compute, ring transfers and waits, bubble; the wait for the slowest pipeline left out, as the
runtime leaves it out). Prints one JSON object and writes it (``--json-out``).

    python benchmarks/pp_bubble.py --json-out benchmarks/results/pp_bubble_cpu.json

Both the runtime's planner and the simulator use ``--profile`` (the shipped 1-thread CPU
calibration by default), so the three figures are of the same plan under the same cost model.
Step 0 is warm-up (first-call allocations) and left out of the mean ratio. Four processes on a
shared 2-core machine time-share: the measured figure is a sanity check of the schedule, not a
benchmark of a GPU pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_flags(args: argparse.Namespace) -> dict[str, object]:
    return {"model": args.model, "dtype": "float32", "steps": args.steps, "global_batch_tokens": args.tokens,
            "max_seq_len": args.max_len, "seed": args.seed, "profile": args.profile}


def run_train(args: argparse.Namespace, pp: int, metrics: str) -> float:
    """``hdp train`` on ``args.nproc`` processes; its wall seconds."""
    argv = [sys.executable, "-m", "hdp.cli", "train", "--nproc", str(args.nproc), "--pp", str(pp),
            "--metrics", metrics, "--no-progress"]
    argv += [x for k, v in train_flags(args).items() for x in (f"--{k.replace('_', '-')}", str(v))]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=args.timeout)
    if proc.returncode != 0:
        sys.exit(f"pp_bubble: hdp train --pp {pp} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return time.perf_counter() - start


def simulated_bubbles(args: argparse.Namespace, pp: int) -> list[dict[str, object]]:
    """Per step: the simulator's 1F1B bubble fraction of the plan the runtime trained, and its shape."""
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.train.run import Run
    from hdp.sim.cluster import Cluster
    from hdp.plan.estimate import micro_batch_times
    from hdp.runtime.pipeline.schedule import bubble_fraction
    from hdp.sim.training_step import simulate_step

    hdp = args.nproc // pp
    run = Run.from_config(TrainConfig(pp=pp, **train_flags(args)), hdp)  # the worker's own (capacity too)
    out = []
    for step in range(args.steps):
        plan = run.plan(step, hdp)
        res = simulate_step(plan, run.cost, Cluster(args.nproc, pp=pp, gpus_per_node=args.nproc))
        idle = sum(r.pp_bubble_s for r in res.ranks)
        busy = sum(r.compute_s + r.comm_s + r.ring_wait_s + r.pp_bubble_s for r in res.ranks)
        out.append({"simulated": idle / busy if busy > 0 else 0.0,
                    "predicted_here": bubble_fraction(micro_batch_times(plan, run.cost), pp),
                    "micro_batches": [len(rp.micro_batches) for rp in plan.ranks], "rings": len(plan.rings)})
    return out


def measure(args: argparse.Namespace, pp: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.jsonl")
        wall = run_train(args, pp, metrics)
        with open(metrics) as f:
            records = [json.loads(line) for line in f if line.strip()]
    sims = simulated_bubbles(args, pp)
    steps = []
    for rec, sim in zip(records, sims):
        measured, sim_b = rec["pp_bubble"], sim["simulated"]
        if abs(sim.pop("predicted_here") - rec["pp_bubble_predicted"]) > 1e-12:  # the runtime's plan, or a mismatch
            sys.exit(f"pp_bubble: step {rec['step']} of --pp {pp}: the rebuilt plan is not the one hdp train ran")
        steps.append({"step": rec["step"], "measured": measured, "predicted": rec.get("pp_bubble_predicted"),
                      **sim, "ratio": measured / sim_b if sim_b > 0 else None, "loss": rec["loss"],
                      "step_time_s": rec["step_time_s"]})
    ratios = [s["ratio"] for s in steps[1:] if s["ratio"] is not None]
    return {"pp": pp, "pipelines": args.nproc // pp, "wall_s": wall, "steps": steps,
            "mean_ratio": sum(ratios) / len(ratios) if ratios else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--pp", type=int, nargs="+", default=[2, 4], help="pipeline stages to run (default 2 4)")
    ap.add_argument("--nproc", type=int, default=4, help="local CPU processes (default 4)")
    ap.add_argument("--model", default="small")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=2048, help="--global-batch-tokens (default 2048)")
    ap.add_argument("--max-len", type=int, default=512, help="--max-seq-len (default 512)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="cpu-small-1t", help="the device profile of planner and simulator")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one hdp train may take")
    ap.add_argument("--json-out", help="also write the JSON here")
    args = ap.parse_args(argv)
    bad = [p for p in args.pp if p < 2 or args.nproc % p]
    if bad or args.steps < 2:
        print(f"pp_bubble: every --pp must be >= 2 and divide --nproc {args.nproc} (got {bad}), --steps >= 2",
              file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = {"benchmark": "pp_bubble", "device": "cpu", "nproc": args.nproc, "model": args.model,
              "tokens": args.tokens, "max_len": args.max_len, "profile": args.profile, "seed": args.seed,
              "runs": [measure(args, p) for p in args.pp]}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
