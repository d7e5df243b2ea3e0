"""Every plan from every strategy obeys docs/plan-format.md rules 1-6 on random batches."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hdp.plan import STRATEGIES, Plan, PlanError, build_cost_model, make_plan
from hdp.plan.validate import check_plan, violations
from hdp.plan.zigzag import max_member_tokens, member_shares, ranks_needed, ring_segments

from .conftest import COST, COST_7B, batches, rule2_members, rule4_fewest


def fits(strategy: str, lengths: list[int], ranks: int, capacity: int) -> bool:
    """Whether a strategy can hold the batch at all (pow2 needs aligned power-of-two groups,
    static a divisor of the rank count)."""
    need = max(rule4_fewest(n, capacity) for n in lengths)
    if need > ranks:
        return False
    if strategy == "pow2":
        from hdp.plan.schedule.baselines import pow2_size
        return all(pow2_size(n, capacity, ranks) > 0 for n in lengths)
    if strategy == "static":
        from hdp.plan.schedule.baselines import static_cp_size
        try:
            static_cp_size(ranks, capacity, max(lengths), lengths)
        except ValueError:
            return False
    return True


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), big=st.booleans())
def test_every_plan_obeys_the_rules(strategy, batch, big):
    lengths, ranks, capacity = batch
    assume(fits(strategy, lengths, ranks, capacity))
    cost = COST_7B if big else COST  # the 7B model has layers to offload; tiny has none
    plan = make_plan(lengths, ranks, capacity, cost, strategy)
    assert violations(plan) == []
    assert plan.strategy == strategy
    layout = STRATEGIES[plan.extra.get("chosen", strategy)].layout  # auto: the candidate it chose
    assert plan.extra.get("fewest_ranks", False) == (layout == "fewest")
    again = make_plan(lengths, ranks, capacity, cost, strategy)
    assert again.to_json() == plan.to_json()  # rule 6: byte-identical
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("strategy", ["hdp", "hdp-naive", "hdp-balance", "hdp-offload"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches())
def test_hdp_uses_the_fewest_ranks_and_the_zigzag_pieces(strategy, batch):
    """Checked against rules 2 and 4 written out in conftest.py, not the planner's helpers."""
    lengths, ranks, capacity = batch
    assume(fits(strategy, lengths, ranks, capacity))
    plan = make_plan(lengths, ranks, capacity, COST_7B, strategy)
    rings = {r.seq: r for r in plan.rings}
    for rp in plan.ranks:
        for mb in rp.micro_batches:
            for seq in {s.seq for s in mb.segments}:
                length = lengths[seq]
                ring = rings.get(seq)
                assert (ring.size if ring else 1) == rule4_fewest(length, mb.token_limit)
                if ring is None:
                    continue
                have = sorted((s.start, s.end) for s in mb.segments if s.seq == seq)
                want = sorted(p for p in rule2_members(length, ring.size)[ring.ranks.index(rp.rank)] if p[1] > p[0])
                assert have == want


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 200_000), limit=st.integers(1, 5_000))
def test_ranks_needed_is_rule_4(length, limit):
    assume(length // limit < 400)  # keep the written-out definition cheap
    assert ranks_needed(length, limit) == rule4_fewest(length, limit)


@settings(max_examples=150, deadline=None)
@given(length=st.integers(1, 10**7), ring_size=st.integers(1, 300))
def test_max_member_tokens_is_the_largest_member(length, ring_size):
    shares = [sum(b - a for a, b in m) for m in rule2_members(length, ring_size)]
    assert max_member_tokens(length, ring_size) == max(shares)
    assert member_shares(length, ring_size) == shares
    whole = ring_segments(7, length, ring_size)  # every member's segments at once, as plans are built
    assert [[(x.start, x.end) for x in segs] for segs in whole] == [[p for p in m if p[1] > p[0]]
                                                                    for m in rule2_members(length, ring_size)]


def test_huge_lengths_are_fast():
    import time

    t0 = time.perf_counter()
    assert ranks_needed(10**12, 8192) == 10**12 // 8192 + 1
    k = ranks_needed(10**12, 8191)
    assert max_member_tokens(10**12, k) <= 8191 < max_member_tokens(10**12, k - 1)
    with pytest.raises(PlanError, match="needs 122,070,313 ranks"):
        make_plan([10**12], 1024, 8192, COST_7B, "hdp-balance")
    assert time.perf_counter() - t0 < 5


def test_pipelines_obey_the_rules_and_the_bound_covers_the_drain():
    cost = build_cost_model("tiny", pp=2)
    lengths = [1, 5, 64, 65, 300, 7, 7, 7, 128, 500, 3, 200]
    plan = make_plan(lengths, 9, 64, cost)
    check_plan(plan)
    assert plan.pipeline_stages == 2 and plan.extra["balance"] == "pp"
    # One micro-batch per rank: the step is the micro-batch's forward and backward through both stages.
    one = make_plan([64], 1, 64, cost)
    t = cost.seq_time(64) + cost.micro_batch_overhead()
    assert one.predicted_step_time_s == pytest.approx(2 * t)
    assert one.lower_bound_s == pytest.approx(2 * cost.seq_time(64))


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
    assert rule4_fewest(11, 3) == 5
    assert plan.rings[0].size == 5


def test_offload_respects_copy_hiding_and_host_memory():
    import dataclasses

    from hdp.plan.cost.cost_model import CostModel
    from hdp.plan.schedule.sharding import place

    cost = COST_7B
    p = place(2**21, 8192, cost, offload=True)
    assert p.ranks < ranks_needed(2**21, 8192) and 0 < p.offload_ratio <= cost.max_offload_ratio(2**21)
    assert p.offload_ratio * (cost.layers - 2) * cost.act_bytes(p.token_limit) <= cost.device.host_mem_gib * 2**30
    small_host = CostModel(cost.model, dataclasses.replace(cost.device, host_mem_gib=1.0))
    q = place(2**21, 8192, small_host, offload=True)
    assert q.offload_ratio * (cost.layers - 2) * cost.act_bytes(q.token_limit) <= 2**30
    assert q.ranks > p.ranks


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_many_tiny_and_one_huge(strategy):
    lengths = [1, 2, 3] * 700 + [8192 * 60 + 5, 8192, 8193, 1]
    plan = make_plan(lengths, 64, 8192, COST_7B, strategy=strategy, max_len=8192 * 64)
    check_plan(plan)
    assert sum(mb.num_tokens for rp in plan.ranks for mb in rp.micro_batches) == sum(lengths)
