"""``hdp simulate`` shows its progress (issue 23, item 7): without a terminal one flushed line per
finished strategy x step cell on stderr, never on stdout, whose JSON stays what ``--quiet`` prints."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from hdp.progress import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIM = ["simulate", "--gpus", "16", "--global-batch-tokens", "200000", "--max-len", "32768", "--strategies",
       "hdp,static", "--steps", "2", "--json"]
TIMINGS = ("simulation_time_s", "planning_time_s")


def hdp(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "hdp.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)


def without_timings(doc):
    """The JSON less its wall-clock fields (the only values two identical runs may differ in)."""
    if isinstance(doc, dict):
        return {k: without_timings(v) for k, v in doc.items() if k not in TIMINGS}
    return doc


@pytest.mark.timeout(120)
def test_simulate_without_a_tty_prints_a_line_per_cell_on_stderr_and_leaves_stdout_json():
    loud, quiet = hdp(*SIM), hdp(*SIM, "--quiet")
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    # static with two-level rings also plans its flat-ring baseline: 3 strategies x 2 steps.
    lines = loud.stderr.splitlines()
    assert len(lines) == 6, loud.stderr
    assert all(line.startswith("hdp simulate: ") and "planned and simulated" in line for line in lines)
    assert lines[0].startswith("hdp simulate: hdp step 1/2") and "(1/6," in lines[0]
    assert "(6/6," in lines[-1]
    assert quiet.stderr == ""
    assert len(loud.stdout.splitlines()) == 1  # one JSON object, nothing else
    assert without_timings(json.loads(loud.stdout)) == without_timings(json.loads(quiet.stdout))


def test_progress_lines_every_n_and_the_last_and_a_bar_only_on_a_terminal():
    out = io.StringIO()  # not a terminal
    with Progress("x", 5, stream=out, every=2) as bar:
        assert bar.lines
        for done in range(1, 6):
            bar.update(done, "", lambda: f"unit {done}")
    assert out.getvalue().splitlines() == ["unit 2", "unit 4", "unit 5"]
    out = io.StringIO()
    with Progress("x", 3, stream=out) as bar:  # no terminal, no every: every unit
        for done in range(1, 4):
            bar.update(done, "", lambda: f"unit {done}")
    assert out.getvalue().splitlines() == ["unit 1", "unit 2", "unit 3"]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    with Progress("x", 3, stream=term) as bar:
        assert not bar.lines
        bar.update(3, "done", lambda: "never a line")
    assert "never a line" not in term.getvalue()
