"""The benchmark's reduced form (docs/offload.md) runs and reports bit-identical gradients."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_reduced_form(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_offload", ROOT / "benchmarks" / "offload.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up while the file executes
    spec.loader.exec_module(bench)
    out = tmp_path / "offload.json"
    assert bench.main(["--cpu", "--cpu-tokens", "16", "--tokens", "16384", "--layers", "4", "--steps", "1",
                       "--plan-tokens", "262144", "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [r["config"] for r in rows][0] == "none" and len(rows) == 5
    assert all(r["identical"] for r in rows[1:]) and not any(r["error"] for r in rows)
    assert {p["dist"] for p in report["planner"]} == {"byted", "github"}
