"""Measure a CPU device profile for the cost model: ``hdp calibrate --device cpu`` with this
script's historical flags (the measurements live in ``hdp/calibrate``). Prints the profile JSON.

    python benchmarks/calibrate_cpu.py --model small --threads 1 --out hdp/plan/profiles/cpu-small-1t.json

is ``hdp calibrate --device cpu --model small --threads 1 --out hdp/plan/profiles/cpu-small-1t.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from hdp.cli import main as hdp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a local rank of hdp train uses this many)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or os.path.join(tmp, "profile.json")
        rc = hdp(["calibrate", "--device", "cpu", "--model", args.model, "--threads", str(args.threads),
                  "--dtype", args.dtype, "--out", out, "--no-progress"])
        if rc == 0:
            with open(out) as f:
                print(f.read(), end="")
    return rc


if __name__ == "__main__":
    sys.exit(main())
