"""The train metrics' ``tflops_per_device`` and ``mfu`` come from the plan's documents and the profile's peak."""

from __future__ import annotations

import pytest
import torch

from hdp.plan import build_cost_model, get_model, make_plan
from hdp.plan.cost.device import load_profile
from hdp.runtime.train.step import StepResult
from hdp.runtime.observe.report import CPU_PROFILE, metrics_record, peak_tflops_for

pytestmark = pytest.mark.timeout(30)


def test_metrics_record_counts_each_document_and_uses_the_peak():
    model = get_model("tiny")
    lengths = [300, 40, 40, 7, 120]  # one ring (capacity 128) and whole documents packed together
    plan = make_plan(lengths, 3, 128, build_cost_model("tiny"), strategy="hdp", max_len=300)
    result = StepResult(loss=1.0, grad_norm=2.0, tokens=sum(lengths), local_tokens=0, local_micro_batches=0)
    rec = metrics_record(0, plan, result, 0.5, model=model, peak_tflops=0.01)
    # By hand: 159,744 linear FLOPs per token (tests/observe/test_flops.py) and 768 per causal pair.
    flops = 159744 * sum(lengths) + 768 * sum(s * (s + 1) // 2 for s in lengths)
    assert rec["tflops_per_device"] == pytest.approx(flops / 0.5 / 3 / 1e12, rel=1e-12)
    assert rec["mfu"] == pytest.approx(rec["tflops_per_device"] / 0.01, rel=1e-12)
    assert "mfu" not in metrics_record(0, plan, result, 0.5)  # old callers: unchanged keys


def test_cpu_runs_are_measured_against_the_cpu_profile():
    cost = build_cost_model("tiny")
    assert peak_tflops_for(torch.device("cpu"), cost) == load_profile(CPU_PROFILE).peak_tflops
    assert cost.device.peak_tflops > 100  # the default (H100) profile is not what a CPU is judged by
