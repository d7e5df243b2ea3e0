"""Faults injected into real ``hdp train`` runs (gloo, localhost): a rank killed mid-step, a silent
rank, a NaN gradient, Ctrl-C / SIGTERM / SIGKILL of the launcher. Each must end the run loudly, in
bounded time, with one line per reporting rank and no process left behind (hdp.runtime.launch.faults)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from hdp.runtime.launch.faults import ENV, Fault

pytestmark = pytest.mark.dist
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--global-batch-tokens", "1024", "--max-seq-len", "512", "--no-progress", "--dtype", "float64"]
TIMEOUT = 4.0
MARGIN = 6.0  # process start-up and the launcher's polling, on a loaded 2-core CI machine


class Train:
    """``hdp train`` in its own session, its stderr lines read as they come with their arrival time."""

    def __init__(self, *args: str, fault: str | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop(ENV, None)
        if fault:
            env[ENV] = fault
        self.proc = subprocess.Popen([sys.executable, "-m", "hdp.cli", "train", *args], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.time(), line.rstrip("\n")))

    def wait(self, timeout: float = 90) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    @property
    def err(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def children(self) -> list[int]:
        """Pids whose parent is the launcher (its ranks)."""
        out = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid:
                out.append(int(pid))
        return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_metrics(path, run: Train, lines: int = 1, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and open(path).read().count("\n") >= lines:
            return
        assert run.proc.poll() is None, run.err
        time.sleep(0.1)
    raise AssertionError(f"no metrics after {timeout} s: {run.err}")


def wait_for_ranks(run: Train, n: int, timeout: float = 60) -> list[int]:
    """The pids of the launcher's ``n`` ranks, once they are all started (to check on them after it exits:
    an orphan is no longer its child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ranks = run.children()
        if len(ranks) >= n:
            return ranks
        assert run.proc.poll() is None, run.err
        time.sleep(0.05)
    raise AssertionError(f"{n} ranks did not start: {run.err}")


def gone(ranks: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in ranks) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(alive(p) for p in ranks)


def strict(name: str) -> None:
    raise AssertionError(f"{name} in the metrics file: not strict JSON")


def detect_seconds(run: Train) -> float:
    """Seconds from the injected fault to the first survivor's hdp error line."""
    (t0,) = [float(m.group(1)) for _, line in run.lines if (m := re.search(r"hdp debug: .*\(t=([\d.]+)\)", line))]
    first = min(t for t, line in run.lines if line.startswith("hdp train: error:"))
    return first - t0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["kill", "hang"])
def test_dead_or_silent_peer_ends_the_run_within_the_timeout_naming_step_ring_and_peer(kind, tmp_path):
    metrics = tmp_path / "m.jsonl"
    run = Train("--nproc", "3", "--steps", "3", "--timeout", f"{TIMEOUT:g}", "--metrics", str(metrics), *SMALL,
                fault=f"{kind}:1:1")
    ranks = wait_for_ranks(run, 3)
    code = run.wait()
    assert code == (1 if kind == "kill" else 3), run.err  # the cause: a killed rank (1), else a peer failure
    errors = [line for _, line in run.lines if line.startswith("hdp train: error:")]
    assert errors, run.err
    for line in errors:  # the survivors: step, ring, micro-batch and the peer, in one line each
        assert re.search(r"rank [02]: .* step 1: ring \d+, micro-batch \d+: (send to|receive from) rank 1", line), line
    # Nothing but hdp's own lines: no traceback, no raw gloo text.
    assert all(line.startswith(("hdp train:", "hdp debug:")) for _, line in run.lines), run.err
    if kind == "kill":
        assert "rank 1 was killed (SIGKILL): probably out of memory" in run.err
        assert detect_seconds(run) < TIMEOUT + MARGIN
    else:
        assert "did not complete within" in run.err and "stopped ranks [1]" in run.err
        assert TIMEOUT - 0.5 < detect_seconds(run) < TIMEOUT + MARGIN
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [0]
    assert gone(ranks)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("on_nan", ["stop", "skip"])
def test_nan_gradient_on_one_rank_is_seen_by_all_on_that_step(on_nan, tmp_path):
    metrics = tmp_path / "m.jsonl"
    run = Train("--nproc", "2", "--steps", "3", "--metrics", str(metrics), "--on-nan", on_nan, *SMALL,
                fault="nan:1:1")
    code = run.wait()
    hdp_lines = [line for _, line in run.lines if not line.startswith("hdp debug:")]
    assert len(hdp_lines) == 1, run.err  # every rank knows; rank 0 says it once
    assert re.search(r"step 1: loss [\d.]+, gradient norm nan \(documents \d+", hdp_lines[0]), hdp_lines[0]
    records = [json.loads(x, parse_constant=strict) for x in metrics.read_text().splitlines()]
    if on_nan == "stop":
        assert code == 4 and "stopped before the update" in hdp_lines[0]
        assert [r["step"] for r in records] == [0]
    else:
        assert code == 0 and "update skipped" in hdp_lines[0]
        assert [r["step"] for r in records] == [0, 1, 2] and [r.get("skipped", False) for r in records] == [False, True, False]
        assert records[1]["grad_norm"] is None and all(r["loss"] == r["loss"] for r in records)  # strict JSON


def test_a_skipped_step_leaves_parameters_and_optimizer_untouched():
    """What a checkpoint helper relies on: ``StepResult.finite`` False means the state is the previous one."""
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.model.source import build_train_model
    from hdp.runtime.train.step import build_optimizer, train_step
    from hdp.runtime.train.run import Run

    cfg = TrainConfig(steps=2, global_batch_tokens=256, max_seq_len=128, dtype="float64", progress=False)
    run = Run.from_config(cfg, 1)
    model = build_train_model(run.config, torch.device("cpu"))
    opt = build_optimizer(model, cfg.lr)
    fault = Fault("nan", rank=0, step=1)
    fault.install(model, 0)
    results = []
    for step in range(2):
        fault.current_step = step
        before = opt.flat_param.clone(), opt.exp_avg.clone(), opt.num_steps
        results.append(train_step(model, opt, run.plan(step, 1), run.stream.batch(step), rank=0, group=None,
                                  device=torch.device("cpu"), timeout_s=10))
    assert results[0].finite and not results[1].finite
    assert torch.equal(opt.flat_param, before[0]) and torch.equal(opt.exp_avg, before[1]) and opt.num_steps == before[2]
    assert torch.isfinite(opt.flat_param).all()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_stopping_the_launcher_stops_every_rank(how, tmp_path):
    """Ctrl-C (SIGINT to the whole foreground group), SIGTERM and SIGKILL of the ``hdp train`` parent."""
    metrics = tmp_path / "m.jsonl"
    run = Train("--nproc", "2", "--steps", "100000", "--metrics", str(metrics), *SMALL)
    wait_for_metrics(metrics, run)
    ranks = run.children()
    assert len(ranks) == 2
    if how == "SIGINT":
        os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    else:
        run.proc.send_signal(getattr(signal, how))
    code = run.wait(30)
    assert gone(ranks), f"orphan ranks after {how}"
    if how == "SIGKILL":
        assert code == -signal.SIGKILL
        return
    assert code == (130 if how == "SIGINT" else 143)
    assert run.err == ("hdp train: interrupted: stopped all 2 ranks" if how == "SIGINT"
                       else "hdp train: stopped by SIGTERM: stopped all 2 ranks")


@pytest.mark.timeout(120)
def test_a_rank_killed_before_the_first_step_leaves_no_empty_metrics_file(tmp_path):
    metrics = tmp_path / "m.jsonl"
    run = Train("--nproc", "2", "--steps", "2", "--timeout", f"{TIMEOUT:g}", "--metrics", str(metrics), *SMALL,
                fault="kill:0:0")
    ranks = wait_for_ranks(run, 2)
    assert run.wait() == 1, run.err
    assert "rank 0 was killed (SIGKILL): probably out of memory" in run.err
    assert not metrics.exists()
    assert gone(ranks)


def _seeded_rank(rank: int, port: int, seeds: tuple[int, int]) -> None:
    from hdp.runtime.launch.spawn import die_with_parent
    from hdp.runtime.launch.worker import run_rank

    die_with_parent()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    os._exit(run_rank(divergent_config(seeds[rank]), rank, 2, rank, use_accelerator=False))


def divergent_config(seed: int):
    from hdp.runtime.config import TrainConfig

    return TrainConfig(steps=1, global_batch_tokens=512, max_seq_len=256, capacity=128, seed=seed, progress=False,
                       timeout_s=20, dtype="float64")


@pytest.mark.timeout(60)
def test_divergent_plans_name_the_ranks_and_both_fingerprints_before_any_ring_starts(capfd):
    import multiprocessing as mp

    from hdp.runtime.launch.spawn import free_port, watch
    from hdp.runtime.train.run import Run

    seeds = (0, 1)  # rank 1 was given another seed: other data, another plan
    prints = [Run.from_config(divergent_config(s), 2).plan(0, 2).fingerprint[:15] for s in seeds]
    assert prints[0] != prints[1]
    ctx = mp.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_seeded_rank, args=(r, port, seeds)) for r in range(2)]
    for p in procs:
        p.start()
    assert watch(procs, grace_s=10) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 2, err  # one line per rank, nothing else
    for rank, line in enumerate(err and sorted(err)):
        assert line.startswith(f"hdp train: error: rank {rank}: step 0: ranks built different plans"), line
        # Both fingerprints, each with its rank: the all-gather of the plan check is all that ran.
        assert f"ranks [0] hold plan {prints[0]}" in line and f"ranks [1] hold plan {prints[1]}" in line
