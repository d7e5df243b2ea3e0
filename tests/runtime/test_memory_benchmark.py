"""benchmarks/memory.py runs (CPU form: tiny model) and its measured state bytes equal the planner's."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_memory_benchmark_cpu_form(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "benchmarks" / "memory.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "memory.json"
    assert bench.main(["--tokens", "64", "--json-out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["recompute"] for r in rows] == ["none", "full"]
    for r in rows:
        assert r["state_bytes"] == r["planned_state_bytes"] > 0
    assert rows[1]["planned_activation_bytes"] < rows[0]["planned_activation_bytes"]
