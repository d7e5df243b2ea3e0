"""``hdp train --model tiny-moe``: 3 ranks (rings of 2 and 3, uneven micro-batch counts) give the loss
and gradient norm of one process on the same global batches, and the same parameters after 2 steps
(float64). Routing is per token, so a document split over a ring routes as it does whole."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hdp.plan import get_model
from hdp.runtime.config import TrainConfig
from hdp.runtime.model.decoder import build_model
from hdp.runtime.optim.lr_schedule import lr_at
from hdp.runtime.train.run import Run
from hdp.runtime.train.step import build_optimizer, train_step
from tests.runtime.test_hf_export import write_corpus
from tests.runtime.test_train_cli import hdp_train, read_metrics

pytestmark = pytest.mark.dist
COMMON = ["--model", "tiny-moe", "--dtype", "float64", "--seed", "3", "--global-batch-tokens", "1200",
          "--max-seq-len", "300", "--no-progress"]


@pytest.mark.timeout(240)
def test_tiny_moe_on_3_ranks_equals_one_process(tmp_path):
    data, out = tmp_path / "data", tmp_path / "export"
    write_corpus(data)
    a = hdp_train(*COMMON, "--data", str(data), "--nproc", "3", "--capacity", "100", "--steps", "2",
                  "--export-hf", str(out), "--metrics", str(tmp_path / "a.jsonl"))
    assert a.returncode == 0, a.stderr
    records = read_metrics(tmp_path / "a.jsonl")
    assert max(r["max_ring"] for r in records) == 3
    assert any(r["micro_batches_min"] != r["micro_batches_max"] for r in records)  # uneven counts

    cfg = TrainConfig(model="tiny-moe", dtype="float64", seed=3, global_batch_tokens=1200, max_seq_len=300,
                      capacity=300, data=str(data), steps=2)
    model = build_model(get_model("tiny-moe"), dtype=torch.float64, device=torch.device("cpu"), seed=3)
    run, opt = Run.from_config(cfg), build_optimizer(model, cfg.lr, cfg.weight_decay)
    for step, rec in enumerate(records):
        lr = lr_at(step, lr=cfg.lr, steps=cfg.lr_steps, schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
                   min_lr=cfg.final_lr)  # as the worker: the run's schedule
        res = train_step(model, opt, run.plan(step, 1), run.stream.batch(step), rank=0, group=None,
                         device=torch.device("cpu"), timeout_s=10, lr=lr)
        assert res.loss == pytest.approx(rec["loss"], rel=1e-9)
        assert res.grad_norm == pytest.approx(rec["grad_norm"], rel=1e-9)
    exported = load_file(str(out / "model.safetensors"))
    assert set(exported) == set(model.state_dict())
    for name, t in model.state_dict().items():  # every parameter (all experts, routers) after 2 steps
        torch.testing.assert_close(exported[name], t, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
