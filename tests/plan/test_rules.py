"""Every plan from every strategy obeys PLAN_FORMAT rules 1-6 on random batches."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdp.plan import Plan, build_cost_model, make_plan
from hdp.plan.zigzag import max_member_tokens, ranks_needed
from hdp.plan.validate import check_plan, violations

COST = build_cost_model("tiny")
COST_7B = build_cost_model("llama-7b")
STRATEGIES = ("hdp", "hdp-naive", "static", "pow2")


@st.composite
def batches(draw):
    """Random batches with the edge cases that matter: 1, C, C+1, near k*C, huge, many tiny."""
    capacity = draw(st.integers(1, 64))
    num_ranks = draw(st.integers(1, 12))
    edge = st.sampled_from([1, capacity, capacity + 1, 2 * capacity - 1, 2 * capacity + 1])
    cap_total = num_ranks * capacity
    length = st.one_of(edge, st.integers(1, capacity), st.integers(1, max(1, cap_total)))
    lengths = draw(st.lists(length.filter(lambda n: n <= cap_total), min_size=1, max_size=40))
    return [min(n, cap_total) for n in lengths], num_ranks, capacity


def fits(strategy: str, lengths: list[int], ranks: int, capacity: int) -> bool:
    """Whether a strategy can hold the batch at all (pow2 needs aligned power-of-two groups,
    static a divisor of the rank count)."""
    need = max(ranks_needed(n, capacity) for n in lengths)
    if need > ranks:
        return False
    if strategy == "pow2":
        from hdp.plan.baselines import pow2_size
        return all(pow2_size(n, capacity, ranks) > 0 for n in lengths)
    if strategy == "static":
        from hdp.plan.baselines import static_cp_size
        try:
            static_cp_size(ranks, capacity, max(lengths), lengths)
        except ValueError:
            return False
    return True


@pytest.mark.parametrize("strategy", STRATEGIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), offload=st.booleans())
def test_every_plan_obeys_the_rules(strategy, batch, offload):
    lengths, ranks, capacity = batch
    if not fits(strategy, lengths, ranks, capacity):
        return
    plan = make_plan(lengths, ranks, capacity, COST_7B if offload else COST, strategy=strategy, offload=offload)
    assert violations(plan) == []
    again = make_plan(lengths, ranks, capacity, COST_7B if offload else COST, strategy=strategy, offload=offload)
    assert again.to_json() == plan.to_json()  # rule 6: byte-identical
    assert Plan.from_json(plan.to_json()) == plan


@settings(max_examples=60, deadline=None)
@given(batch=batches())
def test_hdp_uses_the_fewest_ranks(batch):
    lengths, ranks, capacity = batch
    if not fits("hdp", lengths, ranks, capacity):
        return
    plan = make_plan(lengths, ranks, capacity, COST)
    size = {r.seq: r.size for r in plan.rings}
    for s in plan.sequences:
        k = size.get(s.id, 1)
        assert k == ranks_needed(s.length, capacity)
        assert k <= math.ceil(s.length / capacity) + 1  # the +1 only where zig-zag rounding overflows C
        assert max_member_tokens(s.length, k) <= capacity if k > 1 else s.length <= capacity


def test_balance_pp_obeys_the_rules():
    cost = build_cost_model("tiny", pp=2)
    lengths = [1, 5, 64, 65, 300, 7, 7, 7, 128, 500, 3, 200]
    plan = make_plan(lengths, 9, 64, cost, balance="pp")
    check_plan(plan)
    assert plan.pipeline_stages == 2


def test_validator_catches_broken_plans():
    plan = make_plan([10, 100, 7], 3, 40, COST)
    d = plan.to_dict(with_fingerprint=False)
    d["ranks"][0]["micro_batches"] = list(reversed(d["ranks"][0]["micro_batches"]))
    d["ranks"][1]["micro_batches"][0]["segments"][0]["end"] -= 1
    errs = violations(Plan.from_dict(d))
    assert any("missing" in e for e in errs)


def test_corrupt_fingerprint_is_rejected():
    plan = make_plan([10, 100, 7], 3, 40, COST)
    d = plan.to_dict()
    d["sequences"][0]["length"] = 11
    with pytest.raises(ValueError, match="fingerprint"):
        Plan.from_dict(d)


def test_zigzag_overflow_takes_one_more_rank():
    # L = 11 over k = ceil(11/3) = 4 gives one member 4 tokens > C = 3 with floor-rounded pieces.
    assert max_member_tokens(11, 4) == 4
    assert ranks_needed(11, 3) == 5
    plan = make_plan([11], 5, 3, COST)
    check_plan(plan)
    assert plan.rings[0].size == 5


def test_offload_respects_copy_hiding_and_host_memory():
    import dataclasses

    from hdp.plan.cost import CostModel
    from hdp.plan.sharding import place

    cost = COST_7B
    p = place(2**21, 8192, cost, offload=True)
    assert p.ranks < ranks_needed(2**21, 8192) and 0 < p.offload_ratio <= cost.max_offload_ratio(2**21)
    assert p.offload_ratio * (cost.layers - 2) * cost.act_bytes(p.token_limit) <= cost.device.host_mem_gib * 2**30
    small_host = CostModel(cost.model, dataclasses.replace(cost.device, host_mem_gib=1.0))
    q = place(2**21, 8192, small_host, offload=True)
    assert q.offload_ratio * (cost.layers - 2) * cost.act_bytes(q.token_limit) <= 2**30
    assert q.ranks > p.ranks


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_many_tiny_and_one_huge(strategy):
    lengths = [1, 2, 3] * 700 + [8192 * 60 + 5, 8192, 8193, 1]
    plan = make_plan(lengths, 64, 8192, COST_7B, strategy=strategy, max_len=8192 * 64)
    check_plan(plan)
    assert sum(mb.num_tokens for rp in plan.ranks for mb in rp.micro_batches) == sum(lengths)
