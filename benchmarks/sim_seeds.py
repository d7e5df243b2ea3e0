"""`hdp simulate` (the README's command) once per seed, batch and ring algorithm: speedup ranges.

A speedup that one synthetic batch shows may be that batch's luck, so every claim of docs/results.md
and the README's results table is a min-max over seeds. This runs the command itself,
``hdp simulate --dist D --seed S --ring-algo A --json`` (every strategy, LLaMA-7B, 2M max context,
1,024 GPUs, 32M tokens: its defaults), and keeps each run's JSON beside its dist, seed and ring
algorithm.

    python benchmarks/sim_seeds.py [--seeds 5] [--dists byted,github] [--algos two-level,flat]
        [--out benchmarks/results/sim_seeds.json] [-- extra hdp simulate flags]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def simulate(dist: str, seed: int, algo: str, extra: list[str]) -> dict:
    """One ``hdp simulate --json`` run in a fresh process, as a user runs it."""
    cmd = [sys.executable, "-m", "hdp.cli", "simulate", "--dist", dist, "--seed", str(seed), "--ring-algo", algo,
           "--json", *extra]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"sim_seeds: {' '.join(cmd[2:])} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    ap.add_argument("--dists", default="byted,github")
    ap.add_argument("--algos", default="two-level,flat", help="ring algorithms (default two-level,flat)")
    ap.add_argument("--out", default="benchmarks/results/sim_seeds.json")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    runs = []
    start = time.perf_counter()
    for algo in args.algos.split(","):
        for dist in args.dists.split(","):
            for seed in range(args.seeds):
                out = simulate(dist, seed, algo, extra)
                runs.append({"dist": dist, "seed": seed, "ring_algo": algo, **out})
                speedups = {s: f"{r['speedup_vs_static']:.2f}x" for s, r in out["strategies"].items()}
                print(f"{algo:13} {dist:6} seed {seed}: {speedups}", file=sys.stderr, flush=True)
    result = {"benchmark": "sim_seeds", "command": "hdp simulate --dist D --seed S --ring-algo A --json " + " ".join(extra),
              "seeds": args.seeds, "python": platform.python_version(), "machine": platform.machine(),
              "wall_s": time.perf_counter() - start, "runs": runs}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({"out": args.out, "runs": len(runs), "wall_s": result["wall_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
