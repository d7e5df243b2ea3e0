"""FLOP counts for honest MFU, checked against a hand count of the tiny model (no torch)."""

from __future__ import annotations

import pytest

from hdp.plan.cost.flops import batch_flops, causal_attention_flops, linear_flops_per_token, mfu, tflops_per_device, torchtitan_flops
from hdp.plan.cost.model_config import ModelConfig, get_model

TINY = get_model("tiny")  # h=32, 2 layers, 4 heads x 8, 2 KV heads (kv_dim 16), ffn 64, vocab 256


def hand_linear_fwd_per_token() -> int:
    """Multiply-adds of every weight matmul for one token, written out matrix by matrix."""
    h, kv, ffn, vocab = 32, 16, 64, 256
    per_layer = h * h + h * kv + h * kv + h * h + h * ffn + h * ffn + ffn * h  # q, k, v, o, gate, up, down
    return 2 * (2 * per_layer + h * vocab)  # 2 layers + output head; 2 FLOPs per multiply-add


def hand_attention_fwd(doc_len: int) -> int:
    """Enumerate the causal pairs of one document: query i sees keys 0..i."""
    pairs = sum(1 for i in range(doc_len) for j in range(doc_len) if j <= i)
    heads, head_dim, layers = 4, 8, 2
    return layers * heads * pairs * head_dim * 2 * 2  # QK^T and PV, 2 FLOPs per multiply-add


def test_linear_flops_match_the_hand_count():
    assert hand_linear_fwd_per_token() == 53248
    assert linear_flops_per_token(TINY) == 3 * 53248


def test_attention_is_per_document_not_over_the_packed_length():
    docs = [1, 3, 10, 7, 1]
    got = batch_flops(TINY, docs)
    assert got.linear == 3 * hand_linear_fwd_per_token() * sum(docs)
    assert got.attention == 3 * sum(hand_attention_fwd(s) for s in docs)
    assert got.total == got.linear + got.attention
    packed = causal_attention_flops(TINY, sum(docs))  # what counting the packed row would charge
    assert packed == 3 * hand_attention_fwd(22) and packed > 2.5 * got.attention  # 253 pairs vs 91
    # Order and packing do not matter, only each document's own length.
    assert batch_flops(TINY, docs[::-1]) == got


def test_gqa_does_not_reduce_attention_work():
    mha = ModelConfig("mha", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=4, ffn_size=64, vocab_size=256)
    assert causal_attention_flops(mha, 100) == causal_attention_flops(TINY, 100)
    assert linear_flops_per_token(mha) > linear_flops_per_token(TINY)  # wider K/V projections


def test_torchtitan_formula_by_hand():
    params = 2 * (32 * (32 + 2 * 16) + 32 * 32 + 3 * 32 * 64 + 2 * 32) + 2 * 256 * 32 + 32
    assert TINY.num_params == params
    per_token = 6 * (params - 256 * 32) + 12 * 2 * 4 * 8 * 16
    assert torchtitan_flops(TINY, 22, seq_len=16) == 22 * per_token


def test_torchtitan_overstates_a_packed_long_tail_batch():
    m = get_model("llama-7b")
    docs = [32768] + [512] * 192  # one long document and many short ones, 131,072 tokens
    ours = batch_flops(m, docs).total
    theirs = torchtitan_flops(m, sum(docs), seq_len=32768)
    assert theirs > 1.5 * ours
    # One full-length document: torchtitan counts all s^2 pairs, the causal count about half.
    one = batch_flops(m, [32768])
    tt_attn = torchtitan_flops(m, 32768, 32768) - torchtitan_flops(m, 32768, 0)
    assert tt_attn / one.attention == pytest.approx(2.0, rel=1e-4)


def test_mfu_and_tflops_per_device():
    assert tflops_per_device(8e12, 2.0, 4) == pytest.approx(1.0)
    assert mfu(8e12, 2.0, 4, peak_tflops=2.0) == pytest.approx(0.5)
    assert tflops_per_device(1e12, 0.0, 4) == 0.0 and mfu(1e12, 1.0, 1, 0.0) == 0.0
    with pytest.raises(ValueError):
        batch_flops(TINY, [3, 0])
