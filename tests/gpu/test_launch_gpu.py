"""``hdp train`` on a machine with accelerators: local ranks take one each and say so. Skipped without CUDA."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_local_ranks_use_the_local_accelerators(tmp_path):
    nproc = min(2, torch.cuda.device_count())
    metrics = tmp_path / "m.jsonl"
    proc = subprocess.run([sys.executable, "-m", "hdp.cli", "train", "--nproc", str(nproc), "--steps", "2",
                           "--metrics", str(metrics)], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr
    expected = ", ".join(f"cuda:{r}" for r in range(nproc)) if nproc > 1 else "cuda:0"
    assert f"{expected} ({nproc} rank" in proc.stdout, proc.stdout
    assert all(json.loads(line)["loss"] > 0 for line in metrics.read_text().splitlines())
