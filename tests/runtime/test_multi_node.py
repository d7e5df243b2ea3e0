"""Two ``torchrun`` agents of 2 processes each (``--nnodes 2``, c10d rendezvous on 127.0.0.1), as two
nodes would run: the 4-rank run must equal ``hdp train --nproc 4`` on one agent, step for step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hdp.runtime.launch.spawn import free_port

pytestmark = pytest.mark.dist
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = ["-m", "hdp.cli", "train", "--steps", "2", "--global-batch-tokens", "1024", "--max-seq-len", "512",
         "--dtype", "float64", "--no-progress", "--timeout", "30"]


def losses(path) -> list[tuple[float, float]]:
    with open(path) as f:
        return [(r["loss"], r["grad_norm"]) for r in map(json.loads, f)]


@pytest.mark.timeout(120)
def test_two_torchrun_agents_of_two_ranks_equal_one_launcher_of_four(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    port = free_port()
    two_nodes = tmp_path / "two_nodes.jsonl"
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-conf", f"is_host={int(node == 0)}",
         *TRAIN, "--metrics", str(two_nodes)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT) for node in range(2)]
    try:
        outs = [a.communicate(timeout=90)[0] for a in agents]
    finally:
        for a in agents:
            a.kill()
    assert [a.returncode for a in agents] == [0, 0], outs
    one_node = tmp_path / "one_node.jsonl"
    single = subprocess.run([sys.executable, *TRAIN, "--nproc", "4", "--metrics", str(one_node)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=90)
    assert single.returncode == 0, single.stderr
    got, want = losses(two_nodes), losses(one_node)
    assert len(got) == len(want) == 2
    for (loss, norm), (ref_loss, ref_norm) in zip(got, want):
        assert loss == pytest.approx(ref_loss, rel=1e-12) and norm == pytest.approx(ref_norm, rel=1e-12)
