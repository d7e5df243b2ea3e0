"""Tokens/s of ``hdp`` vs ``static`` vs ``pow2`` on the same global batches (CPU, local gloo ranks).

Every strategy trains the same model from the same weights on the same batches (the batches depend
on the seed and step only); only the plan differs. Step 0 is warm-up and not counted. Prints one
JSON object (machine-readable) and a table; speeds are ratios against ``static`` from this run.
Beside each measurement: the planner's predicted step time for the same plans (its H100 cost model,
so compare the predicted *ratios*, not the seconds).

    python benchmarks/train_throughput.py [--nproc 4] [--steps 6] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile

import torch

from hdp.runtime.config import TrainConfig
from hdp.runtime.launch.spawn import spawn
from hdp.runtime.train.run import Run


def measure(config: TrainConfig, nproc: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.jsonl")
        cfg = TrainConfig(**{**config.__dict__, "metrics": metrics, "progress": False})
        code = spawn(cfg, nproc)
        if code:
            raise SystemExit(f"{config.strategy}: training failed with exit code {code}")
        with open(metrics) as f:
            recs = [json.loads(line) for line in f]
    timed = recs[1:] or recs
    run = Run.from_config(config)
    plans = [run.plan(s, nproc) for s in range(config.steps)][1:] or [run.plan(0, nproc)]
    return {
        "strategy": config.strategy,
        "tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["step_time_s"] for r in timed),
        "mean_step_time_s": sum(r["step_time_s"] for r in timed) / len(timed),
        "final_loss": recs[-1]["loss"],
        "rings_per_step": sum(r["rings"] for r in timed) / len(timed),
        "max_ring": max(r["max_ring"] for r in timed),
        "micro_batches_max": max(r["micro_batches_max"] for r in timed),
        "predicted_step_time_s": sum(p.predicted_step_time_s for p in plans) / len(plans),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--model", default="tiny")
    p.add_argument("--global-batch-tokens", type=int, default=16384)
    p.add_argument("--capacity", type=int, default=2048)
    p.add_argument("--max-seq-len", type=int, default=8192)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    base = TrainConfig(model=args.model, steps=args.steps, global_batch_tokens=args.global_batch_tokens,
                       capacity=args.capacity, max_seq_len=args.max_seq_len)
    results = {s: measure(TrainConfig(**{**base.__dict__, "strategy": s}), args.nproc) for s in ("static", "pow2", "hdp")}
    ref, pred_ref = results["static"]["tokens_per_s"], results["static"]["predicted_step_time_s"]
    for r in results.values():
        r["speedup_vs_static"] = r["tokens_per_s"] / ref
        r["predicted_speedup_vs_static"] = pred_ref / r["predicted_step_time_s"] if r["predicted_step_time_s"] else None
    out = {
        "benchmark": "train_throughput",
        "config": {**{k: v for k, v in base.__dict__.items() if k not in ("metrics", "progress")}, "nproc": args.nproc},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "device": "cpu", "backend": "gloo"},
        "results": results,
    }
    print(json.dumps(out))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
    print(f"\n{'strategy':8} {'tokens/s':>10} {'vs static':>10} {'predicted':>10} {'rings/step':>11} {'max ring':>9}",
          file=sys.stderr)
    for s, r in results.items():
        pred = r["predicted_speedup_vs_static"]
        print(f"{s:8} {r['tokens_per_s']:10,.0f} {r['speedup_vs_static']:9.2f}x {pred:9.2f}x "
              f"{r['rings_per_step']:11.1f} {r['max_ring']:9d}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
