"""Checkpoints end to end (``hdp train --save-dir/--resume/--max-restarts``), float64 on gloo.

* exact resume: stop after step k, resume to n: the losses of steps k+1..n equal the uninterrupted
  run's to 1e-12 and the batches (token ids of every sequence, ``--dump-batches``) are the same;
* another world size: saved on 3 ranks, resumed on 4 and on 1 (``--zero 1`` states resharded by
  DCP), losses equal to 1e-9 — the ring plans differ with the world size, so the sums of token
  losses and gradients run in another order (the same tolerance as the 1-rank vs 3-rank test);
* a rank SIGKILLed mid-run under ``--max-restarts 1``: same final losses, every step once;
* bad checkpoints: truncated, corrupt, of another model or config: one line, exit 2, nothing deleted.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from hdp.runtime.checkpoint import files
from tests.runtime.test_train_cli import hdp_train, read_metrics

pytestmark = pytest.mark.dist
COMMON = ["--model", "tiny", "--dtype", "float64", "--seed", "3", "--global-batch-tokens", "1024",
          "--max-seq-len", "512", "--no-progress", "--lr-schedule", "cosine", "--warmup-steps", "1"]
N = 4


def train(tmp_path, name: str, *args: str, nproc: int = 3, timeout: float = 150):
    metrics, dump = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.batches.jsonl"
    proc = hdp_train(*COMMON, "--nproc", str(nproc), "--metrics", str(metrics), "--dump-batches", str(dump),
                     *args, timeout=timeout)
    return proc, metrics, dump


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-rank run of N steps, and a checkpoint after step 2 of the same schedule."""
    tmp = tmp_path_factory.mktemp("ref")
    proc, metrics, dump = train(tmp, "ref", "--steps", str(N))
    assert proc.returncode == 0, proc.stderr
    save = tmp / "ck"
    proc, _, _ = train(tmp, "first", "--steps", "2", "--schedule-steps", str(N), "--save-dir", str(save),
                          "--async-save")  # written in the background; completed before the run ends
    assert proc.returncode == 0, proc.stderr
    return tmp, read_metrics(metrics), read_metrics(dump), save


@pytest.mark.timeout(300)
def test_resume_on_the_same_ranks_is_exact_and_sees_the_same_batches(reference, tmp_path):
    _, ref, ref_batches, save = reference
    assert [s for s, _ in files.complete_checkpoints(str(save))] == [2]
    manifest = json.load(open(files.step_dir(str(save), 2) + "/hdp.json"))
    assert manifest["world_size"] == 3 and manifest["zero"] == 1 and manifest["adam_steps"] == 2
    assert {f"__{r}_0.distcp" for r in range(3)} <= set(manifest["files"])  # one shard file per rank
    proc, metrics, dump = train(tmp_path, "resumed", "--steps", str(N), "--resume", str(save),
                                "--save-dir", str(tmp_path / "ck"))  # else it saves into the shared `save`
    assert proc.returncode == 0, proc.stderr
    got = read_metrics(metrics)
    assert [r["step"] for r in got] == [2, 3]
    for r in got:
        assert abs(r["loss"] - ref[r["step"]]["loss"]) <= 1e-12 * abs(ref[r["step"]]["loss"])
        assert r["lr"] == ref[r["step"]]["lr"]
    assert read_metrics(dump) == ref_batches[2:]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("nproc, zero", [(4, "1"), (1, "0")])
def test_resume_on_another_world_size_gives_the_same_losses(reference, tmp_path, nproc, zero):
    _, ref, _, save = reference
    proc, metrics, _ = train(tmp_path, "other", "--steps", str(N), "--resume", str(save), "--zero", zero,
                             "--save-dir", str(tmp_path / "ck"),  # else it saves into the shared `save`
                             nproc=nproc)
    assert proc.returncode == 0, proc.stderr
    got = read_metrics(metrics)
    assert [r["step"] for r in got] == [2, 3]
    for r in got:
        assert r["loss"] == pytest.approx(ref[r["step"]]["loss"], rel=1e-9)
        assert r["grad_norm"] == pytest.approx(ref[r["step"]]["grad_norm"], rel=1e-9)


@pytest.mark.timeout(300)
def test_a_killed_rank_restarts_from_the_checkpoint_with_the_same_losses(reference, tmp_path):
    _, ref, ref_batches, _ = reference
    marker = tmp_path / "killed"
    os.environ["HDP_TEST_KILL"] = f"1:3:{marker}"  # rank 1 dies as step 3 begins, after the step-2 save
    try:
        proc, metrics, dump = train(tmp_path, "killed", "--steps", str(N), "--save-dir", str(tmp_path / "ck"),
                                    "--save-every", "2", "--max-restarts", "1")
    finally:
        del os.environ["HDP_TEST_KILL"]
    assert proc.returncode == 0, proc.stderr
    assert marker.exists() and "restarting all 3 ranks from" in proc.stderr and "step-000002" in proc.stderr
    got = read_metrics(metrics)
    assert [r["step"] for r in got] == list(range(N))  # none skipped, none twice
    for r, want in zip(got, ref, strict=True):
        assert abs(r["loss"] - want["loss"]) <= 1e-12 * abs(want["loss"])
    assert read_metrics(dump) == ref_batches
    assert [s for s, _ in files.complete_checkpoints(str(tmp_path / "ck"))] == [2, 4]


def _bad_copy(reference, tmp_path, damage) -> str:
    _, _, _, save = reference
    copy = tmp_path / "bad"
    shutil.copytree(save, copy)
    damage(files.step_dir(str(copy), 2))
    return str(copy)


def _truncate(path):
    with open(os.path.join(path, "__1_0.distcp"), "r+b") as f:
        f.truncate(100)


def _flip(path):
    with open(os.path.join(path, "__0_0.distcp"), "r+b") as f:
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0xFF]))


def _no_manifest(path):
    os.remove(os.path.join(path, "hdp.json"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage, args, message", [
    (_truncate, [], "is truncated or corrupt: __1_0.distcp has 100 bytes"),
    (_flip, [], "is corrupt: __0_0.distcp does not match the SHA-256"),
    (_no_manifest, [], "is incomplete (hdp.json missing)"),
    (None, ["--model", "small"], "incompatible config: model 'tiny' (this run: 'small')"),
    (None, ["--seed", "4"], "incompatible config: seed 3 (this run: 4)"),
    (None, ["--global-batch-tokens", "2048"], "global_batch_tokens 1024 (this run: 2048)"),
])
def test_a_bad_checkpoint_is_one_line_and_exit_2_and_is_left_alone(reference, tmp_path, damage, args, message):
    path = _bad_copy(reference, tmp_path, damage or (lambda p: None))
    before = sorted(os.listdir(files.step_dir(path, 2)))
    proc, metrics, _ = train(tmp_path, "bad", "--steps", str(N), "--resume", path, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert sorted(os.listdir(files.step_dir(path, 2))) == before


@pytest.mark.timeout(60)
def test_a_fresh_run_refuses_a_save_dir_with_checkpoints(reference, tmp_path):
    _, _, _, save = reference
    proc, _, _ = train(tmp_path, "fresh", "--steps", "2", "--save-dir", str(save))
    assert proc.returncode == 2 and "already holds checkpoints: add --resume" in proc.stderr


def test_trim_keeps_the_steps_before_the_checkpoint_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(5)) + '{"step": 5, "lo')
    files.trim_jsonl(str(path), 3)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 1, 2]


def test_prune_keeps_the_newest_and_ignores_unfinished(tmp_path):
    for s in (10, 20, 30):
        os.makedirs(files.step_dir(str(tmp_path), s))
    os.makedirs(files.step_dir(str(tmp_path), 40) + ".tmp")
    files.prune(str(tmp_path), 2)
    assert [s for s, _ in files.complete_checkpoints(str(tmp_path))] == [20, 30]
    assert os.path.isdir(files.step_dir(str(tmp_path), 40) + ".tmp")


@pytest.mark.timeout(200)
def test_torchrun_restart_resumes_from_the_newest_checkpoint(reference, tmp_path):
    """torchrun --max-restarts 1 restarts the ranks itself; they find TORCHELASTIC_RESTART_COUNT > 0 and resume.

    The restarted attempt meets the agent's store again: without a key prefix per attempt
    (``worker.init_group``) the rank that started first read the dead attempt's gloo addresses and
    timed out connecting to them (it failed every time here once the ranks' start-up took seconds)."""
    import subprocess
    import sys

    from tests.runtime.test_train_cli import ROOT

    _, ref, _, _ = reference
    metrics, marker = tmp_path / "m.jsonl", tmp_path / "killed"
    env = dict(os.environ, HDP_TEST_KILL=f"1:3:{marker}", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
           "-m", "hdp.cli", "train", *COMMON, "--steps", str(N), "--save-dir", str(tmp_path / "ck"), "--save-every", "2",
           "--metrics", str(metrics), "--timeout", "20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = read_metrics(metrics)
    assert marker.exists() and [r["step"] for r in got] == list(range(N))
    for r, want in zip(got, ref, strict=True):  # 2 ranks vs the 3-rank reference: summation order only
        assert r["loss"] == pytest.approx(want["loss"], rel=1e-9)


@pytest.mark.parametrize("sub, message", [("", "is a file: give a directory"), ("x", "is not a writable directory")])
def test_a_save_dir_that_cannot_be_one_is_refused_before_any_rank_starts(tmp_path, capsys, sub, message):
    from hdp.cli import main

    target = tmp_path / "a-file"
    target.write_text("keep me")
    path = str(target / sub) if sub else str(target)
    assert main(["train", "--steps", "1", "--save-dir", path, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert target.read_text() == "keep me"
