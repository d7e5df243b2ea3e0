"""Mixed precision: bf16 compute with fp32 master weights, moments and gradient reduction.

A 1e-6 learning rate moves fp32 master weights although the same AdamW step on bf16 parameters
rounds to nothing; over 30 steps on the default corpus the bf16 loss stays within 2% of float32.
"""

from __future__ import annotations

import json

import pytest
import torch

from hdp.plan import build_cost_model, get_model, make_plan
from hdp.runtime.config import TrainConfig
from hdp.runtime.launch.spawn import free_port
from hdp.runtime.model.decoder import build_model
from hdp.runtime.train.step import build_optimizer, train_step
from hdp.runtime.launch.worker import run_rank
from tests.runtime.test_zero import random_batch

pytestmark = pytest.mark.timeout(120)


def test_tiny_lr_changes_fp32_master_weights_where_pure_bf16_rounds_to_nothing():
    cpu = torch.device("cpu")
    batch = random_batch([40, 17, 9], seed=3)
    plan = make_plan(batch.lengths, 1, 128, build_cost_model("tiny"))
    model = build_model(get_model("tiny"), dtype=torch.bfloat16, device=cpu, seed=0)
    opt = build_optimizer(model, 1e-6)
    assert opt.flat_param.dtype == torch.bfloat16
    assert {opt.master.dtype, opt.exp_avg.dtype, opt.exp_avg_sq.dtype, opt.grad_buffer.dtype} == {torch.float32}
    before = opt.master.clone()
    bf16_before = opt.flat_param.clone()
    res = train_step(model, opt, plan, batch, rank=0, group=None, device=cpu, timeout_s=30)
    assert res.loss > 0 and res.grad_norm > 0
    moved = (opt.master != before).float().mean().item()
    assert moved > 0.9, f"only {moved:.0%} of the fp32 master weights changed"
    # The bf16 copy the forward reads barely changes: a 1e-6 step is far below bf16's resolution.
    assert (opt.flat_param != bf16_before).float().mean().item() < 0.05

    # The same update applied to bf16 parameters directly (torch AdamW) is lost to rounding.
    plain = build_model(get_model("tiny"), dtype=torch.bfloat16, device=cpu, seed=0)
    start = [p.detach().clone() for p in plain.parameters()]
    for p in plain.parameters():
        p.grad = torch.full_like(p, 1e-2)
    torch.optim.AdamW(plain.parameters(), lr=1e-6, weight_decay=0.0).step()
    unchanged = sum(int((p == s).sum()) for p, s in zip(plain.parameters(), start)) / sum(s.numel() for s in start)
    assert unchanged > 0.95


def _losses(dtype: str, tmp_path, monkeypatch) -> list[float]:
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    path = tmp_path / f"{dtype}.jsonl"
    cfg = TrainConfig(model="tiny", dtype=dtype, steps=30, global_batch_tokens=1024, max_seq_len=256, capacity=256,
                      progress=False, metrics=str(path), timeout_s=30)
    assert run_rank(cfg, 0, 1, 0, use_accelerator=False) == 0
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert recs[0]["param_dtype"] == dtype and recs[0]["master_dtype"] == "float32"
    assert recs[0]["grad_reduce_dtype"] == "float32" and recs[0]["loss_dtype"] == "float32"
    return [r["loss"] for r in recs]


def test_bf16_loss_stays_within_2_percent_of_float32_over_30_steps(tmp_path, monkeypatch):
    f32 = _losses("float32", tmp_path, monkeypatch)
    bf16 = _losses("bfloat16", tmp_path, monkeypatch)
    assert f32[-1] < f32[0] - 0.5  # it trains
    for step, (a, b) in enumerate(zip(f32, bf16, strict=True)):
        assert abs(b - a) <= 0.02 * a, f"step {step}: bf16 {b:.4f} vs float32 {a:.4f}"
