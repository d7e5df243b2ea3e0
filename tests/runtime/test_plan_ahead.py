"""``hdp train --plan-ahead D``: steps are planned by background processes while earlier steps train.

* A plan slower than a step but ready within D steps never makes a step after the first wait
  (``HDP_TEST_PLAN_DELAY_S`` makes planning slower than the tiny model's steps);
* a planner's error stops the run with one line per rank, exit 2, no traceback;
* the planner processes die with their rank, even when it is SIGKILLed (no orphans).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def hdp_train(*args: str, env: dict[str, str], timeout: float = 150) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-m", "hdp.cli", "train", *args], capture_output=True, text=True,
                          timeout=timeout, env=full, cwd=ROOT)


@pytest.mark.timeout(180)
def test_planning_slower_than_a_step_but_within_d_steps_never_stalls_a_step(tmp_path):
    delay = 3.0  # seconds per plan: slower than a step of the tiny model
    out = tmp_path / "m.jsonl"
    proc = hdp_train("--nproc", "2", "--steps", "4", "--plan-ahead", "4", "--dtype", "float64",
                     "--metrics", str(out), env={"HDP_TEST_PLAN_DELAY_S": str(delay)})
    assert proc.returncode == 0, proc.stderr
    steps = [json.loads(line) for line in out.read_text().splitlines()]
    steps = [r for r in steps if "plan_wait_s" in r]
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    assert all(r["planning_time_s"] >= delay for r in steps)
    assert all(r["step_time_s"] < delay for r in steps[1:]), "the premise: planning is slower than a step"
    assert steps[0]["plan_wait_s"] > 0  # the first step waits for its plan
    assert [r["plan_wait_s"] for r in steps[1:]] == [0.0, 0.0, 0.0]


@pytest.mark.timeout(180)
def test_a_planner_error_stops_the_run_with_one_line_per_rank(tmp_path):
    proc = hdp_train("--nproc", "2", "--steps", "4", "--dtype", "float64", env={"HDP_TEST_PLAN_FAIL_AT": "2"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "planning failed" in line]
    assert lines and all("step 2: planning failed" in line for line in lines), proc.stderr
    assert len(lines) <= 2  # one per rank at most


ORPHAN = """
import os, sys, time
from hdp.runtime.train.plan_ahead import PlanAhead
ahead = PlanAhead(lambda step: time.sleep(600), 0, 4, 2)
print(" ".join(str(p.pid) for p in ahead.procs), flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state  # exited; only its parent's reaping is left


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_planner_processes_die_with_a_killed_rank():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rank = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, text=True, env=env)
    pids = [int(p) for p in rank.stdout.readline().split()]
    assert len(pids) == 2 and not any(gone(p) for p in pids)
    rank.send_signal(signal.SIGKILL)
    rank.wait()
    deadline = time.monotonic() + 10
    while not all(gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(p) for p in pids), "a planner outlived its rank"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start", [0, 3, 4])
def test_a_run_resumed_at_any_step_gets_each_step_s_own_plan(start):
    """A resume or restart starts at any step (odd ones too): planner j holds start + j, start + j + d, ..."""
    from hdp.runtime.train.plan_ahead import PlanAhead

    ahead = PlanAhead(lambda step: f"plan of step {step}", start=start, end=start + 5, depth=2)
    try:
        assert [ahead.get(step)[0] for step in range(start, start + 5)] == [f"plan of step {s}" for s in range(start, start + 5)]
    finally:
        ahead.close()
