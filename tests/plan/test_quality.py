"""The balance scheduler gets close to the lower bound when there are enough micro-batches."""

from __future__ import annotations

from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model, make_plan
from hdp.plan.work import lower_bound, makespan, quality, sequence_work


def test_work_bound_formula_on_a_small_case():
    # Two sequences of 8 tokens on 2 ranks, C = 4 (each occupies 2 ranks): bound = one sequence per rank pair.
    a = 0.1
    w = sequence_work(8, a)
    assert lower_bound([8, 8], 2, 4, a) == w  # ceil(4/2) * w/2 = w, and total/N = w
    assert lower_bound([1], 4, 4, a) == sequence_work(1, a)


def test_hdp_is_near_the_bound_on_a_long_tailed_batch():
    cost = build_cost_model("llama-7b")
    lengths = sample_lengths("byted", 4 * 2**20, 2**17, seed=3)
    plan = make_plan(lengths, 16, 8192, cost)
    q = quality(plan, cost.work_coefficient)
    assert q["ratio"] < 1.05, q
    naive = make_plan(lengths, 16, 8192, cost, strategy="hdp-naive")
    assert makespan(naive, cost.work_coefficient) > q["makespan"]


def test_ranks_may_run_different_numbers_of_micro_batches():
    cost = build_cost_model("llama-7b")
    lengths = [60000] + [500] * 200
    plan = make_plan(lengths, 10, 8192, cost)
    counts = [len(r.micro_batches) for r in plan.ranks]
    assert min(counts) < max(counts)
