"""benchmarks/ring_kernels.py (a member's block computations per ring algorithm, one device) runs on
CPU, times every variant against flat in the same run, and its pieces are the zig-zag rule's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from hdp.plan.zigzag import member_pieces

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_benchmark():
    """benchmarks/ring_kernels.py as a module, from its file (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_ring_kernels", os.path.join(ROOT, "benchmarks", "ring_kernels.py"))
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


block_pieces = _load_benchmark().block_pieces


def test_a_block_holds_its_members_zigzag_pieces_in_row_order():
    for length, k in ((1000, 4), (37, 6), (5, 3)):
        for pos in range(k):
            pieces = block_pieces(length, k, pos)
            (a0, b0), (a1, b1) = member_pieces(length, k, pos)
            assert [(j, hi - lo) for j, lo, hi in pieces] == [(pos, b0 - a0), (2 * k - 1 - pos, b1 - a1)]
            assert pieces[0][1] == 0 and pieces[0][2] == pieces[1][1]


def test_every_variant_is_timed_against_flat_in_one_run(tmp_path):
    out = tmp_path / "k.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "ring_kernels.py"), "--member-tokens", "64",
                           "--ring", "4", "--node", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "8",
                           "--repeat", "1", "--json-out", str(out)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert set(res["vs_flat"]) == {"flat", "two-level", "bidirectional"} and res["vs_flat"]["flat"] == 1.0
    assert all(t > 0 for t in res["median_s"].values())
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "ring_kernels.py"), "--ring", "6",
                          "--node", "4"], capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert bad.returncode == 2 and "--ring must be m x --node" in bad.stderr
