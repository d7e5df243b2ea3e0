"""The strategy table's offload cap, and the benchmark-only variant that lost (benchmarks/variants.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from hdp.plan import STRATEGIES, build_cost_model, get_strategy, make_plan
from hdp.plan.validate import violations
from hdp.sim import Cluster, simulate_step

COST = build_cost_model("llama-7b")
LENGTHS = [400_000] + [3_000] * 400 + [20_000] * 40  # one long sequence, many short ones
ROOT = Path(__file__).resolve().parents[2]


def variants():
    spec = importlib.util.spec_from_file_location("bench_variants", ROOT / "benchmarks" / "variants.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_offload_cap_keeps_the_long_ring_within_the_bound():
    free = make_plan(LENGTHS, 64, 10_000, COST, variants().HDP_UNCAPPED)
    capped = make_plan(LENGTHS, 64, 10_000, COST, "hdp")
    assert violations(free) == [] and violations(capped) == []
    assert free.strategy == "hdp-uncapped"
    assert capped.max_ring > free.max_ring
    cl = Cluster(64)
    assert simulate_step(capped, COST, cl).step_time_s < simulate_step(free, COST, cl).step_time_s


def test_old_offload_flag_picks_the_offloading_sibling():
    assert get_strategy("hdp-naive", offload=True) is STRATEGIES["hdp-offload"]
    assert get_strategy("hdp-balance", offload=True) is STRATEGIES["hdp"]
    assert get_strategy("hdp", offload=True) is STRATEGIES["hdp"]
    a = make_plan(LENGTHS, 64, 10_000, COST, get_strategy("hdp-balance", offload=True))
    assert a.to_json() == make_plan(LENGTHS, 64, 10_000, COST, "hdp").to_json()
