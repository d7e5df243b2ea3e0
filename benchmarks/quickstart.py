"""Wall time and loss of the README's own commands, as a newcomer runs them: `hdp train` and the
"Use your own data" example (its bash block, taken from README.md and run word for word).

    python benchmarks/quickstart.py [--runs 2] [--out benchmarks/results/quickstart.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## Use your own data", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def timed(script: str, cwd: str) -> float:
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-ec", script], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"quickstart: {script.strip().splitlines()[-1]!r} failed: {proc.stderr.strip()[-500:]}")
    return wall


def losses(path: str) -> list[float]:
    with open(path) as f:
        return [json.loads(line)["loss"] for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--runs", type=int, default=2, help="runs of each command (default 2)")
    ap.add_argument("--out", default="benchmarks/results/quickstart.json")
    args = ap.parse_args(argv)
    commands = [("hdp train", "hdp train --metrics m.jsonl --no-progress\n"),
                ("the data example (hdp data prepare + hdp train --data, 10 steps)", data_example())]
    load, results = [os.getloadavg()[0]], []
    for name, script in commands:
        walls, loss = [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                walls.append(timed(script, tmp))
                loss = losses(os.path.join(tmp, "m.jsonl"))
            load.append(os.getloadavg()[0])
            print(f"{name}: {walls[-1]:.1f} s, loss {loss[0]:.3f} -> {loss[-1]:.3f}", file=sys.stderr, flush=True)
        results.append({"command": name, "wall_s": walls, "steps": len(loss), "loss_first": loss[0], "loss_last": loss[-1]})
    out = {"benchmark": "quickstart", "commands": results, "load": load,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
