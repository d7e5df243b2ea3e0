"""Fuzz the plan reader and the validator: a valid plan, randomly mutated (a field deleted, replaced by
any JSON value, an integer nudged, a list item dropped or doubled), must either validate or be
refused with a ``ValueError`` that says something. Never a KeyError, TypeError, IndexError, ..."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdp.plan import build_cost_model, get_model, get_strategy, make_plan
from hdp.plan.types import Plan
from hdp.plan.validate import check_plan

COST = build_cost_model(get_model("tiny"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def valid_plans(draw) -> dict[str, Any]:
    lengths = draw(st.lists(st.integers(1, 600), min_size=1, max_size=6))
    ranks = draw(st.integers(1, 4))
    strategy = draw(st.sampled_from(["hdp", "static", "pow2"]))
    try:
        plan = make_plan(lengths, ranks, 256, COST, get_strategy(strategy), max_len=600)
    except ValueError:
        plan = make_plan([10], 1, 256, COST, get_strategy("hdp"), max_len=600)
    return plan.to_dict(with_fingerprint=draw(st.booleans()))


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in the nested dict/list (the root is ())."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, prefix + (i,))
    return out


@st.composite
def mutated(draw) -> Any:
    d = draw(valid_plans())
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(d)))
        if not where:
            if draw(st.booleans()):
                return draw(json_values)
            continue
        parent = d
        for key in where[:-1]:
            parent = parent[key]
        key = where[-1]
        op = draw(st.sampled_from(["delete", "replace", "nudge", "double"]))
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(json_values)
        elif op == "nudge" and isinstance(parent[key], int) and not isinstance(parent[key], bool):
            parent[key] += draw(st.sampled_from([-2, -1, 1, 2, 10**9]))
        elif op == "double" and isinstance(parent[key], list) and parent[key]:
            parent[key].append(parent[key][0])
    return d


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_plan_validates_or_is_a_clear_value_error(d):
    try:
        plan = Plan.from_json(json.dumps(d))
        check_plan(plan)
    except ValueError as e:
        assert str(e).strip(), "a ValueError must say what is wrong"


@given(valid_plans())
@settings(max_examples=30, deadline=None)
def test_unmutated_plans_round_trip_and_validate(d):
    plan = Plan.from_json(json.dumps(d))
    check_plan(plan)
    assert plan.to_dict(with_fingerprint=False) == {k: v for k, v in d.items() if k != "fingerprint"}


def test_malformed_fields_are_named():
    d = make_plan([300, 20], 2, 256, COST, get_strategy("hdp"), max_len=600).to_dict(with_fingerprint=False)
    d["ranks"][1]["micro_batches"][0]["segments"][0]["start"] = "0"
    try:
        Plan.from_dict(d)
    except ValueError as e:
        assert "ranks[1].micro_batches[0].segments[0].start must be an integer" in str(e)
    else:
        raise AssertionError("a string start was accepted")
