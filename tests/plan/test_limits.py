"""Input beyond what can be planned is refused within a second, with one line and exit 2.

Before these limits a 30-digit length made ``hdp plan`` walk ~1e22 steps and ``--ranks 1000000000``
built a list per rank for minutes. Each case runs as a real process; its CPU time must stay under a
second, and its wall time under a second more than the same command refused at argparse (the
interpreter's start-up on a loaded 2-core machine is not the planner's)."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hdp.plan import PlanError, build_cost_model, make_plan
from hdp.plan.planner import MAX_RANKS, MAX_SEQUENCES

ROOT = Path(__file__).resolve().parents[2]
COST = build_cost_model("llama-7b")


def timed_hdp(*args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """(process, wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hdp.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("line,args,needle", [
    ("1" * 30 + "\n", ["plan", "--ranks", "1024"], "more than the planner takes"),
    ("1000000000000000\n", ["plan", "--ranks", "1024"], "even offloading every layer it may: raise --ranks"),
    ("1000000000000\n", ["plan", "--ranks", "1024"], "it needs 21,331,059 ranks"),  # exact where counting is quick
    (None, ["plan", "--ranks", "1000000000"], "--ranks must be between 1 and 131,072"),
    (None, ["plan", "--tokens", "100000000000"], "--tokens: a synthetic batch of 100,000,000,000 tokens"),
    (None, ["simulate", "--tokens", "100000000000"], "give between 1 and 4,294,967,296 tokens"),
    (None, ["simulate", "--gpus", "1000000000"], "more than the planner takes (131,072)"),
])
def test_unplannable_input_is_refused_at_once(tmp_path, line, args, needle):
    if line is not None:
        f = tmp_path / "lengths.txt"
        f.write_text(line)
        args = [*args, "--lengths", str(f)]
    _, reference, _ = timed_hdp(args[0], "--ranks", "four")  # refused by argparse: start-up only
    proc, wall, cpu = timed_hdp(*args, "--json")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"
    assert wall < reference + 1.0, f"{wall:.2f} s wall, start-up {reference:.2f} s"


def test_the_library_refuses_the_same_input():
    with pytest.raises(PlanError, match="between 1 and 131,072"):
        make_plan([10], MAX_RANKS + 1, 8192, COST)
    with pytest.raises(PlanError, match="split it into several global batches"):
        make_plan([1] * (MAX_SEQUENCES + 1), 8, 8192, COST)
    t0 = time.perf_counter()
    with pytest.raises(PlanError, match="even offloading"):
        make_plan([10**15 + 1], 1024, 8191, COST, "auto")
    assert time.perf_counter() - t0 < 1.0
