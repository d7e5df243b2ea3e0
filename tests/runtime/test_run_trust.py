"""A run a person can trust (issue 23): progress in any log, resume without traps, SIGTERM keeps the
work, refusals before any rank starts, TensorBoard without repeated steps, faults that fire once.

Multi-process runs are few and tiny (tiny model, 2 ranks, float64, a few steps of 256 tokens); the
refusals run no rank and each is timed (``REFUSAL_S``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from hdp.runtime.checkpoint import files
from tests.conftest import read_jsonl

pytestmark = pytest.mark.dist
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--model", "tiny", "--dtype", "float64", "--seed", "5", "--global-batch-tokens", "256", "--max-seq-len", "128",
        "--nproc", "2", "--timeout", "30"]
REFUSAL_S = 30.0
"""A refusal must come within seconds: the interpreter and torch import take most of it on a busy
2-core machine (``hdp train --steps 0``, refused by the config alone, takes as long)."""


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([extra.pop("PREPEND", ""), ROOT,
                                                        os.environ.get("PYTHONPATH", "")]).strip(os.pathsep),
                OMP_NUM_THREADS="1", **extra)


def hdp(*args: str, cwd=ROOT, timeout: float = 150, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdp.cli", "train", *args], capture_output=True, text=True,
                          timeout=timeout, env=env(**extra), cwd=cwd)


# -- 1. a log file sees a line per step while the run goes on ------------------------------------------
@pytest.mark.timeout(120)
def test_without_a_tty_each_step_is_a_flushed_line_before_the_run_ends(tmp_path):
    # Rank 1 hangs at step 2 (never answers): the run cannot end before we kill it, so the lines of
    # steps 1 and 2 must have reached the pipe while it was still running. Before: nothing until the end.
    proc = subprocess.Popen([sys.executable, "-m", "hdp.cli", "train", *TINY, "--steps", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env=env(HDP_DEBUG_FAULT="hang:1:2"), start_new_session=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and sum(line.startswith("step ") for line in lines) < 2:
            time.sleep(0.05)
        steps = [line for line in lines if line.startswith("step ")]
        assert proc.poll() is None, "the run ended: the lines proved nothing"
        assert [s.split()[1] for s in steps] == ["1/4", "2/4"], lines
        assert "loss" in steps[0] and "tok/s" in steps[0]
        assert any(line.startswith("hdp train: cpu (2 ranks); capacity") for line in lines), lines
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_log_every_prints_every_nth_step_and_the_last(capsys):
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.observe.report import Reporter

    rep = Reporter(TrainConfig(steps=5, log_every=2), enabled=True)
    for s in range(5):
        rep.step({"step": s, "loss": 1.0, "tokens_per_s": 10.0, "step_time_s": 0.1})
    rep.close()
    printed = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert printed == ["2/5", "4/5", "5/5"]


# -- 2, 3, 4, 8. resume: keeps saving, any spelling of the model's path, a different model, the schedule -----
@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    """A 2-step run of a tiny Llama directory given by a relative path, saved after every step."""
    pytest.importorskip("transformers")
    from transformers import LlamaConfig

    tmp = tmp_path_factory.mktemp("hf")
    LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256).save_pretrained(tmp / "my_llama")
    args = [a for a in TINY if a not in ("--model", "tiny")]
    proc = hdp(*args, "--hf-model", "my_llama", "--steps", "2", "--schedule-steps", "4", "--save-dir", "ck",
               "--save-every", "1", "--no-progress", "--metrics", "m.jsonl", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return tmp, args


@pytest.mark.timeout(200)
def test_resume_keeps_saving_into_the_resumed_dir_and_accepts_another_spelling_of_the_model(hf_run, tmp_path):
    src, args = hf_run
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    # An absolute path to the same model, and no --save-dir: before, refused ("hf_model 'my_llama'") and,
    # once past that, nothing saved after the resume.
    proc = hdp(*args, "--hf-model", str(tmp_path / "my_llama"), "--steps", "4", "--schedule-steps", "4",
               "--resume", "ck", "--metrics", "m.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[:3]
    assert first[0] == "hdp train: resumed from ck/step-000002 (step 2 of 4)", first
    assert first[1] == "hdp train: saving checkpoints to ck every step and after the last step", first
    assert [s for s, _ in files.complete_checkpoints(str(tmp_path / "ck"))] == [3, 4]  # --keep 2
    assert [r["step"] for r in read_jsonl(tmp_path / "m.jsonl")] == [0, 1, 2, 3]
    assert "checkpoints" in proc.stdout and "step-000004" in proc.stdout  # the summary says where


@pytest.mark.timeout(120)
def test_a_changed_schedule_or_model_is_refused_before_any_rank_with_the_way_out(hf_run, tmp_path):
    src, args = hf_run
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    common = [*args, "--resume", "ck", "--no-progress"]
    longer = hdp(*common, "--hf-model", "my_llama", "--steps", "6", cwd=tmp_path)
    assert longer.returncode == 2 and longer.stderr.count("\n") == 1, longer.stderr
    assert "--schedule-steps 4" in longer.stderr and "--override schedule" in longer.stderr
    lr = hdp(*common, "--hf-model", "my_llama", "--steps", "4", "--schedule-steps", "4", "--lr", "1e-3", cwd=tmp_path)
    assert lr.returncode == 2 and "--override lr" in lr.stderr, lr.stderr
    # Another model under the same folder name (same parameter shapes, another norm epsilon): the same
    # spelling was accepted before; now refused once, by the launcher, before any rank starts.
    cfg = json.loads((tmp_path / "my_llama" / "config.json").read_text())
    (tmp_path / "my_llama" / "config.json").write_text(json.dumps({**cfg, "rms_norm_eps": 1e-3}))
    other = hdp(*common, "--hf-model", "my_llama", "--steps", "4", "--schedule-steps", "4", cwd=tmp_path)
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "hf_model 'config.json sha256:" in other.stderr and "rank" not in other.stderr


@pytest.mark.timeout(200)
def test_override_changes_the_schedule_and_lr_on_purpose_and_says_so_in_the_metrics(hf_run, tmp_path):
    from hdp.runtime.optim.lr_schedule import lr_at

    src, args = hf_run
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    proc = hdp(*args, "--hf-model", "my_llama", "--steps", "3", "--lr", "1e-3", "--override", "lr,schedule",
               "--resume", "ck", "--no-progress", "--metrics", "m.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (rec,) = [r for r in read_jsonl(tmp_path / "m.jsonl") if r["step"] == 2]
    assert rec["overrides"] == "lr,schedule"
    assert rec["lr"] == lr_at(2, lr=1e-3, steps=3, schedule="cosine", min_lr=1e-3 / 10)


# -- 11. SIGTERM saves the step in flight; the checkpoint resumes exactly ----------------------------------
@pytest.mark.timeout(300)
def test_sigterm_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    n = 16
    ref = hdp(*TINY, "--steps", str(n), "--no-progress", "--metrics", str(tmp_path / "ref.jsonl"))
    assert ref.returncode == 0, ref.stderr
    want = {r["step"]: r for r in read_jsonl(tmp_path / "ref.jsonl")}
    metrics, save = tmp_path / "cut.jsonl", tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-m", "hdp.cli", "train", *TINY, "--steps", str(n), "--no-progress",
                             "--save-dir", str(save), "--metrics", str(metrics)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # as a cluster preempting the job
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    (done,) = [s for s, _ in files.complete_checkpoints(str(save))]
    assert 2 <= done < n, err
    assert f"stopped after step {done} of {n}: saved {save}/step-{done:06d}" in err and "stopped by SIGTERM" in err
    resumed = hdp(*TINY, "--steps", str(n), "--no-progress", "--resume", str(save), "--metrics", str(metrics))
    assert resumed.returncode == 0, resumed.stderr
    got = read_jsonl(metrics)
    assert [r["step"] for r in got] == list(range(n))
    for r in got[done:]:
        assert abs(r["loss"] - want[r["step"]]["loss"]) <= 1e-12 * abs(want[r["step"]]["loss"])


# -- 12. an injected fault fires once per run: a restart gets past it ------------------------------------
@pytest.mark.timeout(200)
def test_an_injected_kill_fires_once_so_max_restarts_succeeds(tmp_path):
    proc = hdp(*TINY, "--steps", "3", "--no-progress", "--save-dir", str(tmp_path / "ck"), "--save-every", "1",
               "--max-restarts", "1", "--metrics", str(tmp_path / "m.jsonl"), HDP_DEBUG_FAULT="kill:1:1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("kills itself") == 1 and "restarting all 2 ranks" in proc.stderr
    assert [r["step"] for r in read_jsonl(tmp_path / "m.jsonl")] == [0, 1, 2]


# -- 5, 6, 7. refused before any rank starts, within seconds ---------------------------------------------
def refused(*args: str, **extra: str) -> tuple[str, float]:
    start = time.monotonic()
    proc = hdp(*args, "--no-progress", timeout=REFUSAL_S * 2, **extra)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("hdp train: error: ") and "error: rank" not in proc.stderr  # the launcher's
    print(f"refused in {took:.1f} s: {' '.join(args)}")
    assert took < REFUSAL_S
    return proc.stderr, took


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args, message", [
    (["--nproc", "100000"], "CPU processes need at least"),
    (["--model", "llama-7b", "--steps", "1"], "llama-7b does not fit this machine"),
    (["--model", "llama-70b", "--steps", "1"], "llama-70b does not fit this machine"),
    (["--global-batch-tokens", "100000000000", "--steps", "1"], "--global-batch-tokens 100,000,000,000"),
])
def test_what_cannot_run_here_is_refused_in_seconds(args, message):
    err, _ = refused(*args)
    assert message in err and "h100" not in err


@pytest.fixture()
def no_hf_extra(tmp_path):
    """A sitecustomize that makes transformers and safetensors unimportable, as without the hf extra."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nfor m in ('transformers', 'safetensors'):\n"
                                           "    sys.modules[m] = None\n")
    return str(shim)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flag", ["--hf-model", "--export-hf"])
def test_a_missing_hf_extra_is_one_line_before_any_rank(flag, no_hf_extra, tmp_path):
    # Before: --hf-model was a 22-line traceback, --export-hf failed after the last step (model lost).
    model = tmp_path / "model"
    if flag == "--hf-model":  # a real model directory: the missing package is the only thing wrong
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    err, _ = refused("--nproc", "2", "--steps", "1", flag, str(model), PREPEND=no_hf_extra)
    assert "the 'hf' extra" in err and "pip install 'hdp[hf]'" in err


# -- 9. TensorBoard: each step once after a resume -------------------------------------------------------
@pytest.mark.timeout(60)
def test_tensorboard_has_each_step_once_after_a_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tests.observe.test_tensorboard import read_scalars
    from hdp.runtime.observe.tensorboard import TensorBoardLog

    first = TensorBoardLog(str(tmp_path))
    for s in range(4):  # the crashed run logged steps 2 and 3 after its checkpoint of step 2
        first.write({"step": s, "loss": 10.0 + s})
    first.close()
    time.sleep(1.1)  # a new event file (names carry the second)
    resumed = TensorBoardLog(str(tmp_path), start_step=2)
    for s in range(2, 5):
        resumed.write({"step": s, "loss": 20.0 + s})
    resumed.close()
    assert read_scalars(tmp_path)["loss"] == [(0, 10.0), (1, 11.0), (2, 22.0), (3, 23.0), (4, 24.0)]


# -- 10, 13, 14. what the reports say ----------------------------------------------------------------------
def test_mfu_over_100_percent_says_the_peak_is_wrong_and_a_given_profile_is_the_peak():
    import torch

    from hdp.plan import build_cost_model
    from hdp.runtime.observe.report import mfu_peak, mfu_text

    assert mfu_text(0.5, (1.0, "x")) == "50.0%"
    text = mfu_text(1.265, (0.0154, "cpu-small-1t"))
    assert text.startswith("126.5% (impossible") and "hdp calibrate" in text and "--profile" in text
    cost = build_cost_model("tiny", "cpu-small-1t")
    assert mfu_peak(torch.device("cpu"), cost, "cpu-small-1t") == (cost.device.peak_tflops, "cpu-small-1t")
    assert mfu_peak(torch.device("cpu"), build_cost_model("tiny"))[1] == "cpu-small-1t"  # not the H100's


def test_devices_name_nodes_and_a_plain_run_says_its_model_is_not_kept():
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.observe.report import Reporter, describe_devices

    assert describe_devices(["cpu"] * 4, 2) == "cpu (4 ranks: 2 nodes x 2)"
    assert describe_devices(["cpu"] * 4, 4) == "cpu (4 ranks)"
    rows = dict(Reporter(TrainConfig(), enabled=False).outputs())
    assert "--save-dir" in rows["model"] and "--export-hf" in rows["model"]
    assert "model" not in dict(Reporter(TrainConfig(export_hf="out"), enabled=False).outputs())


def test_torchrun_across_nodes_plans_by_node_from_local_world_size(monkeypatch):
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.launch.spawn import nodes_from_torchrun

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert nodes_from_torchrun(TrainConfig(), 4).gpus_per_node == 2  # before: None, every ring flat
    assert nodes_from_torchrun(TrainConfig(gpus_per_node=4), 4).gpus_per_node == 4  # the flag wins
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert nodes_from_torchrun(TrainConfig(), 4).gpus_per_node is None  # one node: as before
