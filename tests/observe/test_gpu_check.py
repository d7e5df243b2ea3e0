"""benchmarks/gpu_check.py and gpu_check_multi.py without a GPU: the clean skip, and the machinery that
makes a GPU run trustworthy, run for real with CPU sections: partial JSON after every section, a
timed-out section's whole process group killed, pytest's summary kept on a timeout."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "benchmarks")
pytestmark = pytest.mark.timeout(90)
PY = sys.executable


def load(name: str):
    """The benchmark script as a module, from its file (benchmarks/ is not put on sys.path)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load("gpu_check")


@pytest.mark.parametrize("script,line", [
    ("gpu_check", "gpu_check: no CUDA device here; skipped (run this on a GPU machine)"),
    ("gpu_check_multi", "gpu_check_multi: 0 CUDA devices here, this check needs 2 or more; skipped "
                        "(run it on one node with 2-8 GPUs)"),
])
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path, script, line):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    out = tmp_path / "report.json"
    proc = subprocess.run([PY, os.path.join(BENCH, f"{script}.py"), "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [line]
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("script,flags,line", [
    ("gpu_check", ["--only", "train_1gpu", "trian"], "gpu_check: error: unknown section(s) trian; choose from "
                                                    + ", ".join(gpu_check.SECTION_NAMES)),
    ("gpu_check_multi", ["--nproc", "9"], "gpu_check_multi: error: --nproc 9: choose 2..8 ranks (one node)"),
])
def test_bad_flags_are_one_line_and_exit_2_on_any_machine(tmp_path, script, flags, line):
    proc = subprocess.run([PY, os.path.join(BENCH, f"{script}.py"), *flags], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=60, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr.strip().splitlines()) == (2, "", [line])
    assert not list(tmp_path.iterdir())


def test_the_sections_are_the_named_ones_train_first(tmp_path):
    assert tuple(s[0] for s in gpu_check.sections(str(tmp_path / "c.json"))) == gpu_check.SECTION_NAMES
    assert gpu_check.SECTION_NAMES[0] == "train_1gpu"


def test_train_summary_skips_the_compiling_step(tmp_path):
    recs = [{"step": i, "loss": 5.0 - i, "tokens_per_s": 10.0 if i == 0 else 100.0 + i, "step_time_s": 1.0,
             "mfu": 0.4, "tflops_per_device": 400.0} for i in range(4)]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    got = gpu_check.summarise_train(str(path))
    assert got["steps"] == 4 and got["tokens_per_s_median_after_step0"] == 102.0 and got["mfu_median_after_step0"] == 0.4
    assert gpu_check.summarise_train(str(tmp_path / "missing.jsonl")) == {}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_partial_json_after_every_section_and_a_timed_out_group_is_killed(tmp_path):
    out = tmp_path / "check.json"
    pid_file = tmp_path / "grandchild.pid"
    # The section hangs with two grandchildren: one in its group, one in a session of its own (as
    # torchrun starts its workers). All ignore SIGINT, so only the SIGKILLs of the tree end them.
    sleepy = textwrap.dedent(f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(120)"
        kids = [subprocess.Popen([sys.executable, "-c", code], start_new_session=new) for new in (False, True)]
        open({str(pid_file)!r}, "w").write(" ".join(str(k.pid) for k in kids))
        time.sleep(120)
    """)
    reader = f"import json; r = json.load(open({str(out)!r})); print(sorted(r['steps']), r['steps']['sleepy']['timed_out'])"
    sections = [("first", [PY, "-c", "print('first done')"], 30, None),
                ("sleepy", [PY, "-c", sleepy], 3, lambda res: res.update(parsed=True)),
                ("reader", [PY, "-c", reader], 30, None)]
    start = time.perf_counter()
    report = gpu_check.run_sections(sections, str(out), {"device": "cpu"}, grace_s=1, say=lambda line: None)
    assert time.perf_counter() - start < 30
    steps = report["steps"]
    assert steps["first"]["rc"] == 0 and "first done" in steps["first"]["output_tail"]
    assert steps["sleepy"]["timed_out"] and steps["sleepy"]["rc"] is None and steps["sleepy"]["parsed"]
    assert steps["sleepy"]["seconds"] < 15
    # The third section read the file the first two had left: rewritten after every section.
    assert "['first', 'sleepy'] True" in steps["reader"]["output_tail"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["failed_steps"] == ["sleepy"]
    grandchildren = [int(p) for p in pid_file.read_text().split()]
    assert len(grandchildren) == 2
    deadline = time.time() + 10
    while any(map(alive, grandchildren)) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, grandchildren)), "a timed-out section's grandchild outlived it"


def test_pytest_summary_is_kept_on_a_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # a bare pytest starts in well under a second
    (tmp_path / "test_hangs.py").write_text(textwrap.dedent("""
        import time
        def test_quick():
            pass
        def test_hangs():
            time.sleep(120)
    """))
    res = gpu_check.run_section([PY, "-m", "pytest", "-v", "-p", "no:cacheprovider", "test_hangs.py"], 8,
                                str(tmp_path / "logs" / "pytest.log"), grace_s=10, cwd=str(tmp_path))
    assert res["timed_out"]
    got = gpu_check.pytest_summary(open(res["log"]).read())
    assert got["summary"].startswith("1 passed"), got


def test_pytest_summary_of_a_log_without_one():
    log = "tests/gpu/a.py::test_x PASSED  [ 33%]\ntests/gpu/a.py::test_y FAILED  [ 66%]\ntests/gpu/b.py::test_z PASSED\n"
    assert gpu_check.pytest_summary(log)["summary"] == "no summary line (killed): 1 failed, 2 passed"
    full = log + "FAILED tests/gpu/a.py::test_y - AssertionError: boom\n==== 1 failed, 2 passed in 3.10s ====\n"
    assert gpu_check.pytest_summary(full) == {"summary": "1 failed, 2 passed in 3.10s",
                                              "failed_tests": ["tests/gpu/a.py::test_y"]}


gpu_check_multi = load("gpu_check_multi")


@pytest.mark.filterwarnings("ignore::UserWarning")  # the uncounted call's warnings reach pytest
def test_sync_counter_counts_each_calls_sync_warnings(monkeypatch):
    import warnings

    import torch

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def step(n: int) -> int:
        for _ in range(n):
            warnings.warn("called a synchronizing CUDA operation", UserWarning)  # what "warn" mode says
        warnings.warn("something else", UserWarning)
        return n

    counter = gpu_check.SyncCounter(step)
    assert [counter(3), counter(0), counter(3)] == [3, 0, 3]
    assert counter.per_call == [3, 0, 3]  # "always": a repeated warning is counted every time
    assert modes == ["warn", "default"] * 3
    assert sum(counter.where.values()) == 6
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert counter(2) == 2 and counter.per_call == [3, 0, 3]  # without CUDA nothing to count: not a fake 0


def test_multi_runs_cover_every_algorithm_with_valid_train_flags(tmp_path):
    import argparse

    from hdp.commands.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for nproc, per_node in ((2, "1"), (4, "2"), (8, "2")):
        runs = gpu_check_multi.runs(nproc, str(tmp_path))
        assert {f"{nproc}gpu_{a}" for a in ("flat", "two-level", "bidirectional")} <= set(runs)
        for name, (ranks, args) in runs.items():
            parsed = parser.parse_args(args)  # every flag exists and takes its value
            assert ranks == (1 if name.startswith("1gpu") else nproc)
            assert parsed.metrics == str(tmp_path / f"{name}.jsonl")
        assert {"1gpu_float32", *gpu_check_multi.ONE_GPU_BF16} <= set(runs)
        two_level = runs[f"{nproc}gpu_two-level"][1]
        assert two_level[two_level.index("--gpus-per-node") + 1] == per_node
        resume = runs["resume_b"][1]
        assert resume[resume.index("--resume") + 1] == str(tmp_path / "resume_a" / "step-000002")


def test_exactness_allows_the_one_gpu_bf16_drift_and_no_more():
    fp32 = [5.0, 4.5, 4.0]
    runs = {"1gpu_float32": fp32, "1gpu_bfloat16": [5.0, 4.51, 4.0], "1gpu_bfloat16_one_micro_batch": [5.0, 4.5, 4.004],
            "2gpu_flat": [5.0, 4.505, 4.0], "2gpu_two-level": [5.0, 4.49, 4.009], "2gpu_bidirectional": [5.0, 4.5, 4.02]}
    got = gpu_check_multi.exactness(runs, 2)
    assert got["allowance"] == pytest.approx(0.01)  # the larger of the two 1-GPU bf16 drifts
    assert {a: v["ok"] for a, v in got["algorithms"].items()} == {"flat": True, "two-level": True, "bidirectional": False}
    assert not got["ok"]
    runs["2gpu_bidirectional"] = [5.0, 4.5, 4.001]
    assert gpu_check_multi.exactness(runs, 2)["ok"]
    del runs["2gpu_flat"][-1]  # a run that stopped early is not exact
    assert not gpu_check_multi.exactness(runs, 2)["algorithms"]["flat"]["ok"]
    del runs["1gpu_bfloat16_one_micro_batch"]  # no allowance measured: nothing passes
    assert not any(v["ok"] for v in gpu_check_multi.exactness(runs, 2)["algorithms"].values())


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_resume_verdict_from_real_checkpoints(tmp_path):
    """DCP checkpoints written here, read back by the script's loader; a buffer left at its fresh value fails."""
    import torch
    import torch.distributed.checkpoint as dcp

    g = torch.Generator().manual_seed(0)
    ref = {k: torch.randn(40, generator=g) for k in ("param", "master", "exp_avg", "exp_avg_sq")}

    def save(name: str, state: dict, step: int = 3) -> str:
        path = tmp_path / name
        dcp.save({k: v.clone() for k, v in state.items()}, checkpoint_id=str(path), no_dist=True)
        (path / "hdp.json").write_text(json.dumps({"step": step, "adam_steps": step, "rng": "x"}))
        return str(path)

    noise = {k: v + 1e-4 * torch.randn(40, generator=g) for k, v in ref.items()}
    before = {k: v - 0.1 for k, v in ref.items()}
    good = {k: v + 1e-4 * torch.randn(40, generator=g) for k, v in ref.items()}
    bad = dict(good, exp_avg_sq=torch.randn(40, generator=g))  # one buffer not restored
    load = gpu_check_multi.load_checkpoint
    paths = {n: save(n, s) for n, s in (("ref", ref), ("noise", noise), ("good", good), ("bad", bad))}
    paths["before"] = save("before", before, step=2)
    loaded = load(paths["ref"])
    assert set(loaded) == {"param", "master", "exp_avg", "exp_avg_sq", "hdp.step", "hdp.adam_steps"}
    assert torch.equal(loaded["master"], ref["master"]) and loaded["hdp.step"] == 3
    ok = gpu_check_multi.resume_verdict(load(paths["good"]), loaded, load(paths["noise"]), load(paths["before"]))
    assert ok["ok"] and ok["uninformative"] == []  # one step moved every buffer and counter past the noise
    failed = gpu_check_multi.resume_verdict(load(paths["bad"]), loaded, load(paths["noise"]), load(paths["before"]))
    assert not failed["ok"] and [k for k, b in failed["buffers"].items() if not b["ok"]] == ["exp_avg_sq"]
    stale_counter = gpu_check_multi.resume_verdict(dict(load(paths["good"]), **{"hdp.adam_steps": 0}), loaded,
                                                   load(paths["noise"]), load(paths["before"]))
    assert not stale_counter["ok"]


def test_host_syncs_may_not_grow_past_the_one_gpu_count():
    one = [{"host_syncs_per_step": [50, 3, 3, 4]}]
    runs = {"1gpu_bfloat16": one, "4gpu_flat": [{"host_syncs_per_step": [90, 5, 6, 5]}] * 4}
    assert gpu_check_multi.sync_summary(runs)["ok"]
    runs["4gpu_two-level"] = [{"host_syncs_per_step": [90, 5, 5, 5]}, {"host_syncs_per_step": [90, 40, 41, 40]}]
    got = gpu_check_multi.sync_summary(runs)
    assert not got["ok"] and got["runs"]["4gpu_two-level"]["worst_rank_median"] == 40
