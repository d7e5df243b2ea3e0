"""benchmarks/gpu_check.py without a GPU: one clear line, exit 0, no report file; its metrics summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
pytestmark = pytest.mark.timeout(60)


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=50, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == ["gpu_check: no CUDA device here; skipped (run this on a GPU machine)"]
    assert not out.exists()


def test_train_summary_skips_the_compiling_step(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    recs = [{"step": i, "loss": 5.0 - i, "tokens_per_s": 10.0 if i == 0 else 100.0 + i, "step_time_s": 1.0,
             "mfu": 0.4, "tflops_per_device": 400.0} for i in range(4)]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    got = gpu_check.summarise_train(str(path))
    assert got["steps"] == 4 and got["tokens_per_s_median_after_step0"] == 102.0 and got["mfu_median_after_step0"] == 0.4
    assert gpu_check.summarise_train(str(tmp_path / "missing.jsonl")) == {}
