"""``hdp train --offload-ratio 1``: losses and grad norms bit-for-bit equal to no offloading, with
ring and local micro-batches, while the copy path really runs (host == device on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _train(tmp_path, name: str, *extra: str) -> list[dict]:
    metrics = tmp_path / f"{name}.jsonl"
    cmd = [sys.executable, "-m", "hdp.cli", "train", "--model", "small", "--dtype", "float64", "--steps", "2",
           "--nproc", "2", "--capacity", "256", "--global-batch-tokens", "1024", "--max-seq-len", "512",
           "--no-progress", "--metrics", str(metrics), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in metrics.read_text().splitlines()]


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_offloaded_training_is_bit_identical(tmp_path):
    plain = _train(tmp_path, "plain")
    offloaded = _train(tmp_path, "offloaded", "--offload-ratio", "1.0")
    assert any(m["rings"] > 0 for m in plain)
    assert all(m["offloaded_bytes"] > 0 for m in offloaded)
    for a, b in zip(plain, offloaded):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"])
