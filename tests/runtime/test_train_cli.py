"""``hdp train`` end to end: the README's command works, metrics have the documented keys, and the
loss / grad norm do not depend on how many ranks train (whole sequences on 1 rank vs rings on 3)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hdp.cli import main
from tests.conftest import read_jsonl as read_metrics

pytestmark = pytest.mark.dist
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRIC_KEYS = {"step", "loss", "grad_norm", "tokens", "step_time_s", "tokens_per_s", "strategy", "rings", "max_ring",
               "micro_batches_min", "micro_batches_max", "offloaded_bytes", "tflops_per_device", "mfu", "lr", "zero",
               "param_dtype", "master_dtype", "grad_reduce_dtype", "loss_dtype", "recompute", "state_bytes",
               "peak_memory_bytes", "planned_state_bytes", "rings_by_algo", "plan_wait_s", "planning_time_s", "tp", "pp"}


def hdp_train(*args: str, timeout: float = 100) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "hdp.cli", "train", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.timeout(120)
def test_readme_command_trains_and_writes_the_documented_metrics(tmp_path):
    # README: `hdp train` (4 CPU processes, tiny model); one step keeps the test short.
    out = tmp_path / "m.jsonl"
    proc = hdp_train("--steps", "1", "--metrics", str(out))
    assert proc.returncode == 0, proc.stderr
    (rec,) = read_metrics(out)
    assert set(rec) == METRIC_KEYS | {"config"}  # a run's first record carries its flags as TOML (docs/config.md)
    assert rec["strategy"] == "auto" and rec["tokens"] == 4096 and rec["rings"] >= 1 and rec["max_ring"] >= 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("nproc", [1, 3])
def test_default_run_works_on_any_number_of_ranks(nproc, tmp_path):
    """The default capacity is derived for --nproc: the newcomer's first command never fails on it."""
    out = tmp_path / "m.jsonl"
    proc = hdp_train("--nproc", str(nproc), "--steps", "1", "--metrics", str(out))
    assert proc.returncode == 0, proc.stderr
    (rec,) = read_metrics(out)
    assert rec["tokens"] == 4096 and rec["max_ring"] <= nproc
    assert "devices" in proc.stdout and f"cpu ({nproc} rank" in proc.stdout


@pytest.mark.timeout(150)
def test_loss_and_grad_norm_equal_on_1_and_3_ranks(tmp_path):
    common = ["--model", "tiny", "--dtype", "float64", "--seed", "0", "--steps", "2", "--global-batch-tokens", "1536",
              "--max-seq-len", "768", "--no-progress"]
    runs = {}
    for nproc, capacity in ((1, 768), (3, 256)):  # every sequence whole vs rings of 2 and 3
        path = tmp_path / f"n{nproc}.jsonl"
        proc = hdp_train(*common, "--nproc", str(nproc), "--capacity", str(capacity), "--metrics", str(path))
        assert proc.returncode == 0, proc.stderr
        runs[nproc] = read_metrics(path)
    assert all(r["rings"] == 0 for r in runs[1]) and max(r["max_ring"] for r in runs[3]) == 3
    for one, three in zip(runs[1], runs[3], strict=True):
        assert three["loss"] == pytest.approx(one["loss"], rel=1e-9)
        assert three["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-9)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, message", [
    (["--nproc", "2", "--capacity", "64", "--max-seq-len", "1024"], "needs 16 ranks at capacity 64 but only 2 exist"),
    (["--data", "EMPTY"], "has no non-empty documents"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--min-lr", "1"], "--min-lr must be in [0, --lr"),
    (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
    (["--recompute", "full", "--offload"], "offloading has nothing to move"),
    (["--model", "llama-7b", "--zero", "0", "--dtype", "bfloat16"], "does not fit this machine: one rank needs 113.0 GiB"),
    (["--offload-ratio", "1"], "offload_ratio 1 offloads no layer of model tiny"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_process_starts(args, message, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
