"""``hdp plan`` from the command line: JSON contract, plan file, and clear errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.run_cli import run_main

from hdp.plan import Plan
from hdp.plan.validate import check_plan


def hdp(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdp.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


main_ = run_main  # ``hdp`` in this process: exit code, stdout, stderr


def test_plan_json_and_file(tmp_path):
    out = tmp_path / "plan.json"
    r = hdp("plan", "--dist", "byted", "--tokens", "200000", "--max-len", "65536", "--ranks", "12",
            "--capacity", "8192", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for key in ("planning_time_s", "predicted_step_time_s", "lower_bound_s", "area_floor_s", "rings", "max_ring"):
        assert key in info
    assert info["area_floor_s"] <= min(info["lower_bound_s"], info["predicted_step_time_s"])
    plan = Plan.from_json(out.read_text())
    check_plan(plan)
    assert info["fingerprint"] == plan.fingerprint == json.loads(out.read_text())["fingerprint"]


def test_plan_from_lengths_file_with_comments(tmp_path):
    f = tmp_path / "lengths.txt"
    f.write_text("# a batch\n100\n\n20000  # long\n5\n")
    r = hdp("plan", "--lengths", str(f), "--ranks", "4", "--capacity", "8192", "--strategy", "hdp", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["max_ring"] == 3  # hdp: the fewest ranks (auto, the default, may take more)


def test_plan_does_not_import_torch():
    code = ("import sys; from hdp.cli import main; main(['plan','--tokens','100000','--max-len','50000',"
            "'--ranks','8','--capacity','8192','--json']); assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("content,args,needle", [
    ("30000000\n", ["--ranks", "256", "--capacity", "8192"], "sequence 0 has 30,000,000 tokens"),
    ("3000000\n", ["--ranks", "256", "--capacity", "8192", "--strategy", "hdp-balance"], "raise --ranks or --capacity"),
    ("1000000000000\n", ["--ranks", "1024", "--capacity", "8191"], "1,000,000,000,000 tokens"),
    ("10\n", ["--ranks", "4", "--strategy", "static", "--offload"], "static does not offload"),
    ("10\n", ["--ranks", "four"], "invalid int value: 'four' (see hdp plan --help)"),
    ("10\n", ["--strategy", "magic"], "invalid choice: 'magic'"),
    ("10\n0\n", ["--ranks", "4", "--capacity", "8192"], "sequence 1 has length 0"),
    ("10\n-5\n", ["--ranks", "4", "--capacity", "8192"], "sequence 1 has length -5"),
    ("10\n2.5\n", ["--ranks", "4", "--capacity", "8192"], "not an integer"),
    ("# nothing\n", ["--ranks", "4", "--capacity", "8192"], "empty"),
    ("10\n", ["--ranks", "0", "--capacity", "8192"], "--ranks"),
    ("10\n", ["--ranks", "4", "--capacity", "0"], "--capacity"),
])
def test_bad_input_is_one_clear_line_and_exit_2(capsys, tmp_path, content, args, needle):
    f = tmp_path / "lengths.txt"
    f.write_text(content)
    out = tmp_path / "plan.json"
    code, _, err = main_(capsys, "plan", "--lengths", str(f), *args, "--out", str(out))
    assert code == 2
    assert needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == [f]


def test_unreadable_file():
    r = hdp("plan", "--lengths", "/nonexistent/lengths.txt")  # a real process: exit status and stderr
    assert r.returncode == 2 and "cannot read lengths file" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_plan_file_respects_the_umask(tmp_path):
    out = tmp_path / "plan.json"
    code = ("import os, sys; os.umask(0o022); from hdp.cli import main; "
            f"sys.exit(main(['plan','--tokens','100000','--max-len','50000','--ranks','8','--out',{str(out)!r},'--json']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_mode & 0o777 == 0o644


def test_version_and_help_show_the_strategy_table(capsys):
    from hdp import __version__

    code, out, _ = main_(capsys, "--version")
    assert code == 0 and out.strip() == f"hdp {__version__}"
    code, out, _ = main_(capsys, "plan", "--help")
    assert code == 0
    for line in ("strategies:", "hdp-balance  the balance scheduler without offloading", "static"):
        assert line in out


def test_old_flag_spellings_still_work(capsys):
    _, new, _ = main_(capsys, "plan", "--tokens", "200000", "--max-len", "65536", "--ranks", "8", "--pp", "2",
                      "--profile", "h100-sxm-80gb", "--json")
    _, old, err = main_(capsys, "plan", "--tokens", "200000", "--max-seq-len", "65536", "--ranks", "8", "--stages",
                        "2", "--balance", "pp", "--cost-model", "h100-sxm-80gb", "--json")
    assert json.loads(new)["fingerprint"] == json.loads(old)["fingerprint"], err


@pytest.mark.parametrize("text,needle", [("[1, 2]", "list JSON, not an object"), ("{", "not valid JSON"),
                                         ("{}", "malformed")])
def test_bad_device_profile_is_one_line(capsys, tmp_path, text, needle):
    prof = tmp_path / "dev.json"
    prof.write_text(text)
    code, _, err = main_(capsys, "plan", "--tokens", "100000", "--max-len", "50000", "--ranks", "8", "--profile", str(prof))
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1
