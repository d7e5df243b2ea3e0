"""Mixture-of-experts shapes in the planner's cost model (issue 22, part 1): every expert held,
top_k experts and the router charged per token, dense models unchanged."""

from __future__ import annotations

import dataclasses

import pytest

from hdp.plan import build_cost_model
from hdp.plan.cost.flops import linear_flops_per_token, torchtitan_flops
from hdp.plan.cost.memory import ACT_BYTES, layer_activation_bytes_per_token, rank_num_params, state_bytes
from hdp.plan.cost.model_config import PRESETS, ModelConfig, get_model


def test_mixtral_presets_have_the_published_sizes():
    # mistralai/Mixtral-8x7B: 46.7B parameters, 12.9B active; 8x22B: 141B, 39B active.
    assert round(get_model("mixtral-8x7b").num_params / 1e9, 1) == 46.7
    assert round(get_model("mixtral-8x7b").num_active_params / 1e9, 1) == 12.9
    assert round(get_model("mixtral-8x22b").num_params / 1e9) == 141
    assert round(get_model("mixtral-8x22b").num_active_params / 1e9) == 39


def test_expert_parameters_and_flops_by_hand():
    m = get_model("tiny-moe")
    h, f, e, k = m.hidden_size, m.ffn_size, m.num_experts, m.top_k
    attn = h * (h + 2 * m.kv_dim) + h * h
    assert m.params_per_layer == attn + e * 3 * h * f + e * h + 2 * h       # every expert, the router, 2 norms
    assert m.linear_flops_per_token_layer == 2.0 * (attn + k * 3 * h * f + e * h)  # top_k experts + router
    assert m.expert_flops_per_token_layer == 2.0 * k * 3 * h * f
    assert linear_flops_per_token(m) == 3.0 * (m.num_layers * m.linear_flops_per_token_layer + 2.0 * m.vocab_size * h)
    assert torchtitan_flops(m, 1, 0) == 6.0 * (m.num_active_params - m.vocab_size * h)


def test_dense_models_are_unchanged():
    """A dense config's numbers are the formulas they were before experts existed."""
    for name in ("tiny", "llama-7b", "llama-70b"):
        m = get_model(name)
        h = m.hidden_size
        attn = h * (h + 2 * m.kv_dim) + h * h
        assert not m.is_moe and m.num_active_params == m.num_params
        assert m.params_per_layer == attn + 3 * h * m.ffn_size + 2 * h
        assert m.linear_flops_per_token_layer == 2.0 * (m.params_per_layer - 2 * h)
        assert m.work_coefficient == 4 * h / (2 * (4 * h * h + 3 * h * m.ffn_size))
        assert layer_activation_bytes_per_token(m, 2) == ACT_BYTES * (6 * h + 2 * m.kv_dim + 4 * m.ffn_size) / 2


def test_moe_activations_hold_each_routed_copy():
    m = get_model("mixtral-8x7b")
    h, f = m.hidden_size, m.ffn_size
    per_tp = (6 * h + 2 * m.kv_dim + m.top_k * (h + 4 * f)) / 8
    assert layer_activation_bytes_per_token(m, 8) == ACT_BYTES * (per_tp + m.num_experts)
    dense_twin = dataclasses.replace(m, num_experts=0, top_k=0)
    assert layer_activation_bytes_per_token(m, 8) > layer_activation_bytes_per_token(dense_twin, 8)


def test_states_hold_every_expert_and_capacity_follows():
    cost = build_cost_model("mixtral-8x22b", tp=8, pp=4)
    # The fullest (stage, TP index): 14 layers of experts and the embedding or the LM head, not 1/32 of it all.
    n = max(rank_num_params(cost.model, 8, 4, s) for s in range(4))
    assert n > -(-cost.model.num_params // 32)
    assert cost.model_state_bytes(128) == state_bytes(n, zero=1, world_size=128).peak
    capacity = cost.derived_capacity(128)
    assert capacity > 1000
    assert cost.model_state_bytes(128) + capacity * cost.activation_bytes_per_token() <= cost.usable_bytes()
    with pytest.raises(ValueError, match="does not fit"):
        build_cost_model("mixtral-8x22b").derived_capacity(128)


def test_step_time_charges_top_k_experts_at_their_smaller_gemms():
    moe = build_cost_model("mixtral-8x7b", tp=8, pp=4)
    one = dataclasses.replace(moe.model, top_k=1)
    t2, t1 = moe.seq_time(8192), dataclasses.replace(moe, model=one).seq_time(8192)
    assert t2 > t1  # the second routed expert costs time
    dense_rate = dataclasses.replace(moe, model=dataclasses.replace(moe.model, num_experts=0, top_k=0, ffn_size=2 * moe.model.ffn_size))
    # Same FLOPs as a dense MLP twice as wide (router aside), but experts see top_k/E of the rows: never faster.
    assert moe.linear_layer_time(64) >= dense_rate.linear_layer_time(64)


@pytest.mark.parametrize("bad", [dict(num_experts=4, top_k=0), dict(num_experts=4, top_k=5), dict(num_experts=0, top_k=2)])
def test_bad_expert_counts_are_refused(bad):
    with pytest.raises(ValueError, match="top_k"):
        ModelConfig("x", 32, 2, 4, 2, 32, 256, **bad)


def test_moe_presets_are_listed():
    assert {"tiny-moe", "mixtral-8x7b", "mixtral-8x22b"} <= set(PRESETS)
