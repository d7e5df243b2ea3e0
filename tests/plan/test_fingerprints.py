"""Speed-ups that do not change the algorithm keep plans byte-identical: fingerprints recorded
before the planner was optimised (tests/plan/plan_fingerprints.json; seeds 0-2 of byted and
github, 128 and 256 ranks, with and without two-level rings, every named strategy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model, make_plan
from hdp.plan.cost.topology import Topology

COST = build_cost_model("llama-7b")
CASES = json.loads((Path(__file__).parent / "plan_fingerprints.json").read_text())
FAST = [c for c in CASES if c["ranks"] == 128 and c["seed"] < 2]
"""The suite checks this quarter of the cases (about 5 s); ``HDP_ALL_FINGERPRINTS=1`` all of them."""


def selected() -> list[dict]:
    import os

    return CASES if os.environ.get("HDP_ALL_FINGERPRINTS") else FAST


@pytest.mark.parametrize("case", selected(), ids=lambda c: f"{c['dist']}-{c['seed']}-{c['ranks']}-{c['topology']}-{c['strategy']}")
def test_plans_are_byte_identical_to_before_the_speedups(case):
    lengths = sample_lengths(case["dist"], case["tokens"], 2**19, case["seed"])
    topo = None if case["topology"] == "none" else Topology(8, case["topology"], kv_heads=COST.model.num_kv_heads)
    plan = make_plan(lengths, case["ranks"], COST.derived_capacity(case["ranks"]), COST, case["strategy"],
                     max_len=2**19, seed=case["seed"], topology=topo)
    assert plan.fingerprint == case["fingerprint"]
