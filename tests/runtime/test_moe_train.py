"""``hdp train --model tiny-moe``: 3 and 4 ranks (rings of 2-4, uneven micro-batch counts, several
documents per rank) give the loss, the per-document load-balancing loss, the z-loss, the expert load
and the gradient norm of one process on the same global batches, and the same parameters after 2
steps (float64, 1e-9). Routing is per token, so a document split over a ring routes as it does
whole; its balance loss needs the counts of all its members (one exchange per ring per micro-batch),
and the coefficients are large enough that a rank using only its own counts fails the test."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hdp.plan import get_model
from hdp.runtime.config import RouterSpec, TrainConfig
from hdp.runtime.model.decoder import build_model
from hdp.runtime.optim.lr_schedule import lr_at
from hdp.runtime.train.run import Run
from hdp.runtime.train.step import build_optimizer, train_step
from tests.runtime.test_hf_export import write_corpus
from tests.runtime.test_train_cli import hdp_train, read_metrics

pytestmark = pytest.mark.dist
COMMON = ["--model", "tiny-moe", "--dtype", "float64", "--seed", "3", "--global-batch-tokens", "1200",
          "--max-seq-len", "300", "--no-progress", "--aux-loss-coef", "0.05", "--z-loss-coef", "0.01"]
SPEC = RouterSpec("document", 0.05, 0.01)
ROUTER_KEYS = ("aux_loss", "z_loss", "expert_load_max_over_mean")


@pytest.mark.timeout(240)
def test_tiny_moe_on_3_and_4_ranks_equals_one_process(tmp_path):
    data = tmp_path / "data"
    write_corpus(data)
    runs = {}
    for nproc, capacity in ((3, 100), (4, 80)):
        out, metrics = tmp_path / f"export{nproc}", tmp_path / f"m{nproc}.jsonl"
        a = hdp_train(*COMMON, "--data", str(data), "--nproc", str(nproc), "--capacity", str(capacity),
                      "--steps", "2", "--export-hf", str(out), "--metrics", str(metrics))
        assert a.returncode == 0, a.stderr
        records = read_metrics(metrics)
        assert max(r["max_ring"] for r in records) == nproc  # a document split over every rank
        assert any(r["micro_batches_min"] != r["micro_batches_max"] for r in records)  # uneven counts
        runs[nproc] = records, load_file(str(out / "model.safetensors"))

    cfg = TrainConfig(model="tiny-moe", dtype="float64", seed=3, global_batch_tokens=1200, max_seq_len=300,
                      capacity=300, data=str(data), steps=2)
    model = build_model(get_model("tiny-moe"), dtype=torch.float64, device=torch.device("cpu"), seed=3)
    model.router_spec = SPEC  # as build_train_model sets it from the flags
    run, opt = Run.from_config(cfg), build_optimizer(model, cfg.lr, cfg.weight_decay)
    for step in range(2):
        lr = lr_at(step, lr=cfg.lr, steps=cfg.lr_steps, schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
                   min_lr=cfg.final_lr)  # as the worker: the run's schedule
        res = train_step(model, opt, run.plan(step, 1), run.stream.batch(step), rank=0, group=None,
                         device=torch.device("cpu"), timeout_s=10, lr=lr)
        assert res.router["dropped_tokens"] == 0
        for nproc, (records, _) in runs.items():
            rec = records[step]
            assert res.loss == pytest.approx(rec["loss"], rel=1e-9), nproc
            assert res.grad_norm == pytest.approx(rec["grad_norm"], rel=1e-9), nproc
            for key in ROUTER_KEYS:
                assert res.router[key] == pytest.approx(rec[key], rel=1e-9), (nproc, key)
            assert rec["dropped_tokens"] == 0
    for nproc, (_, exported) in runs.items():
        assert set(exported) == set(model.state_dict())
        for name, t in model.state_dict().items():  # every parameter (all experts, routers) after 2 steps
            torch.testing.assert_close(exported[name], t, rtol=1e-9, atol=1e-12, msg=lambda m: f"{nproc} {name}: {m}")
