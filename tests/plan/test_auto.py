"""Strategy ``auto``: never predicted slower than any strategy of the table, and it says why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdp.plan import STRATEGIES, Plan, PlanError, make_plan
from hdp.plan.auto import CANDIDATES, layout_bound
from hdp.plan.cost.topology import Topology
from hdp.plan.validate import violations

from .conftest import COST, COST_7B, batches

ROOT = Path(__file__).resolve().parents[2]
NAMED = [n for n in STRATEGIES if n != "auto"]


def plans_of_every_strategy(lengths, ranks, capacity, cost, topology=None):
    out = {}
    for name in NAMED:
        try:
            out[name] = make_plan(lengths, ranks, capacity, cost, name, topology=topology)
        except PlanError:
            pass
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), big=st.booleans(), node=st.sampled_from([0, 2, 4]),
       algo=st.sampled_from(["two-level", "flat", "bidirectional"]))
def test_auto_is_never_predicted_slower_than_any_strategy(batch, big, node, algo):
    lengths, ranks, capacity = batch
    cost = COST_7B if big else COST
    topology = Topology(node, algo, kv_heads=cost.model.num_kv_heads) if node else None
    named = plans_of_every_strategy(lengths, ranks, capacity, cost, topology)
    if not named:
        with pytest.raises(PlanError):
            make_plan(lengths, ranks, capacity, cost, "auto", topology=topology)
        return
    plan = make_plan(lengths, ranks, capacity, cost, "auto", topology=topology)
    assert violations(plan) == []
    assert plan.strategy == "auto"
    best = min(p.predicted_step_time_s for p in named.values())
    assert plan.predicted_step_time_s <= best
    chosen = plan.extra["chosen"]
    # The plan is the chosen candidate's plan: same rings, same micro-batches.
    assert plan.ranks == named[chosen].ranks and plan.rings == named[chosen].rings
    assert plan.extra.get("fewest_ranks") == named[chosen].extra.get("fewest_ranks")
    times, bounds = plan.extra["candidates"], plan.extra.get("candidate_bounds", {})
    assert set(times) | set(bounds) | set(plan.extra.get("candidates_skipped", {})) <= set(CANDIDATES)
    for name, t in times.items():
        assert t == named[name].predicted_step_time_s
    for name, bound in bounds.items():  # a candidate left out by its bound could not have won
        assert bound <= named[name].predicted_step_time_s * (1 + 1e-12)
        assert bound > plan.predicted_step_time_s
    again = make_plan(lengths, ranks, capacity, cost, "auto", topology=topology)
    assert again.to_json() == plan.to_json()  # rule 6
    assert Plan.from_json(plan.to_json()) == plan


def test_auto_takes_the_scheduler_without_offloading_where_offloading_is_slower():
    """Issue 21: on sequences just over C, hdp's offloading (fewer ranks each) predicts a longer
    step than hdp-balance; auto takes hdp-balance."""
    lengths = [8193] * 300
    hdp = make_plan(lengths, 256, 8192, COST_7B, "hdp")
    balance = make_plan(lengths, 256, 8192, COST_7B, "hdp-balance")
    assert balance.predicted_step_time_s < 0.9 * hdp.predicted_step_time_s
    auto = make_plan(lengths, 256, 8192, COST_7B, "auto")
    assert auto.extra["chosen"] == "hdp-balance"
    assert auto.predicted_step_time_s == balance.predicted_step_time_s
    assert auto.extra["candidates"]["hdp"] == hdp.predicted_step_time_s


def test_layout_bound_bounds_the_plans_of_its_ring_sizes():
    lengths = [3000] * 50 + [40_000, 90_000, 200_000]
    for name in ("pow2", "static", "hdp-naive"):
        plan = make_plan(lengths, 64, 8192, COST_7B, name)
        size = {r.seq: r.size for r in plan.rings}
        sizes = [size.get(i, 1) for i in range(len(lengths))]
        assert layout_bound(lengths, sizes, 64, COST_7B) <= plan.predicted_step_time_s


def hdp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdp.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@pytest.mark.timeout(120)
def test_hdp_plan_defaults_to_auto_and_the_plan_file_says_why(tmp_path):
    lengths = tmp_path / "l.txt"
    lengths.write_text("\n".join(["8193"] * 300) + "\n")
    out = tmp_path / "plan.json"
    proc = hdp("plan", "--lengths", str(lengths), "--ranks", "256", "--capacity", "8192", "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["strategy"] == "auto" and info["chosen"] == "hdp-balance"
    assert info["candidates"]["hdp-balance"] < info["candidates"]["hdp"]
    d = json.loads(out.read_text())
    assert d["format"] == "hdp.plan/1" and d["strategy"] == "auto" and d["chosen"] == "hdp-balance"
    assert d["candidates"] == info["candidates"]
    plan = Plan.from_dict(d)  # still a valid hdp.plan/1 file: the fingerprint covers the new fields
    assert violations(plan) == []
