"""The planner's memory model: the runtime's state bytes, activations with and without recompute,
the derived capacity built from both, and a clear refusal when a model does not fit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hdp.plan import build_cost_model, get_model
from hdp.plan.cost.memory import activation_bytes_per_token, state_bytes

GB = 1e9


def test_state_bytes_by_zero_stage_for_mixed_precision():
    n, w = 1001, 4  # padded to 1004, shards of 251
    z0, z1, z2 = (state_bytes(n, dtype="bfloat16", zero=z, world_size=w) for z in (0, 1, 2))
    assert (z0.params, z0.grads, z0.master, z0.optimizer) == (2 * n, 4 * n, 4 * n, 8 * n)
    assert (z1.params, z1.grads, z1.master, z1.optimizer) == (2 * 1004, 4 * 1004, 4 * 251, 8 * 251)
    assert (z2.params, z2.grads, z2.master, z2.optimizer) == (2 * 1004, 4 * 251, 4 * 251, 8 * 251)
    assert z2.peak == z1.peak == z1.total  # one reduce-scatter per step: the full buffer lives through backward
    pure = state_bytes(n, dtype="float64", zero=1, world_size=w)
    assert pure.master == 0 and pure.total == 8 * 1004 * 2 + 2 * 8 * 251


def test_recompute_keeps_layer_inputs_plus_one_layer():
    m = get_model("llama-7b")
    none = activation_bytes_per_token(m, 32)
    full = activation_bytes_per_token(m, 32, recompute="full")
    per_layer = 2 * (6 * 4096 + 2 * 4096 + 4 * 11008)
    assert none == 32 * per_layer and full == 32 * 2 * 4096 + per_layer
    assert activation_bytes_per_token(m, 8, recompute="full", in_flight=4) == 4 * 8 * 2 * 4096 + per_layer


def test_derived_capacity_is_memory_left_after_states_over_activations():
    for zero in (0, 1, 2):
        for recompute in ("none", "full"):
            cost = build_cost_model("small", zero=zero, recompute=recompute)
            usable = 0.9 * cost.device.mem_total_gib * 2**30
            states = state_bytes(get_model("small").num_params, dtype="bfloat16", zero=zero, world_size=64).peak
            per_token = activation_bytes_per_token(cost.model, cost.model.num_layers, recompute=recompute)
            assert cost.derived_capacity(64) == int((usable - states) // per_token)
    seven = [build_cost_model("llama-7b", recompute=r).derived_capacity(1024) for r in ("none", "full")]
    assert seven[1] > 10 * seven[0]


def test_recompute_charges_an_extra_forward():
    plain, again = build_cost_model("llama-7b"), build_cost_model("llama-7b", recompute="full")
    for length, k in ((4096, 1), (131072, 8)):
        ratio = again.seq_time(length, k) / plain.seq_time(length, k)
        assert 1 + 1 / 3.5 - 1e-9 <= ratio <= 1 + 1 / 3 + 1e-9
    assert again.max_offload_ratio(131072) == 0.0  # nothing left to offload


def hdp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdp.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["plan", "--model", "llama-7b", "--zero", "0"], "needs 121.3 GB per rank for parameters, gradients and optimizer states (--zero 0"),
    (["simulate", "--model", "llama-7b", "--zero", "0", "--gpus", "64"], "but 76.5 GB are usable"),
    (["plan", "--recompute", "full", "--offload"], "offloading has nothing to move"),
])
def test_what_does_not_fit_is_one_line_with_the_numbers(args, message):
    r = hdp(*args)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stdout == ""


def test_plan_and_simulate_accept_zero_and_recompute():
    r = hdp("plan", "--model", "llama-7b", "--recompute", "full", "--zero", "2", "--tokens", "1000000",
            "--max-len", "262144", "--ranks", "64", "--json")
    assert r.returncode == 0, r.stderr
    r = hdp("simulate", "--model", "llama-7b", "--recompute", "full", "--gpus", "64", "--tokens", "1000000",
            "--max-len", "262144", "--strategies", "hdp", "--json")
    assert r.returncode == 0, r.stderr
