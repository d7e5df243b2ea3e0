"""``--tp 2 --pp 2`` (tp x pp worlds): every HDP rank a pipeline of 2 stages, each stage a TP group of 2.

One launch of the whole command on 8 gloo processes against one process on the same global batch:
loss and grad norm to 1e-9, every parameter after 2 steps to 1e-9 (the ``--export-hf`` gather of
the TP shards and stages), the measured state bytes equal to the memory formula's, and the formula's
parameter count equal to each (stage, TP index) model's own.
"""

from __future__ import annotations

import time

import pytest
import torch

from hdp.plan import get_model
from hdp.plan.cost.memory import rank_num_params, state_bytes
from hdp.runtime.model.decoder import build_model
from hdp.runtime.model.tensor_parallel import TensorParallel
from hdp.runtime.train.step import build_optimizer, train_step


def test_the_formulas_parameters_and_state_bytes_are_each_stage_and_tp_ranks_own():
    """Per (stage, TP index) rank of --tp 2 --pp 2: its model's parameters and its optimizer's measured
    state bytes (--zero 0, one process: no collective needed) equal ``rank_num_params`` / ``state_bytes``."""
    cfg = get_model("tiny")
    for s in range(2):
        for t in range(2):
            model = build_model(cfg, dtype=torch.float64, device=torch.device("cpu"), seed=0,
                                tp=TensorParallel(2, t), stage=(s, 2))
            n = rank_num_params(cfg, 2, 2, s)
            assert sum(p.numel() for p in model.parameters()) == n, (s, t)
            want = state_bytes(n, dtype="float64", zero=0, world_size=1).total
            assert build_optimizer(model, 1e-3).state_bytes() == want, (s, t)


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_hdp_train_tp2_pp2_on_8_processes_equals_one_process(tmp_path):
    """2 HDP ranks x 2 stages x 2 TP ranks: pipelines of different micro-batch counts sharing a ring (each
    TP rank of a stage sends its sequence shard to the same TP rank of the next); ZeRO-1 over each
    (stage, TP index) pool of 2."""
    from safetensors.torch import load_file

    from hdp.runtime.config import TrainConfig
    from hdp.runtime.optim.lr_schedule import lr_at
    from hdp.runtime.train.run import Run
    from tests.runtime.test_train_cli import hdp_train, read_metrics

    flags = dict(model="tiny", dtype="float64", global_batch_tokens=700, max_seq_len=300, steps=2)
    metrics = tmp_path / "m.jsonl"
    start = time.perf_counter()
    proc = hdp_train("--nproc", "8", "--tp", "2", "--pp", "2", "--zero", "1", "--capacity", "160", "--no-progress",
                     "--metrics", str(metrics), "--export-hf", str(tmp_path / "hf"),
                     *(x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v))), timeout=280)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    print(f"hdp train --nproc 8 --tp 2 --pp 2: {wall:.1f} s")
    records = read_metrics(metrics)
    assert all(r["tp"] == 2 and r["pp"] == 2 and r["zero"] == 1 and r["rings"] >= 1 for r in records)
    assert records[0]["micro_batches_min"] < records[0]["micro_batches_max"]  # uneven pipelines (2 and 3)
    assert all(0 <= r["pp_bubble"] < 1 for r in records)
    assert records[-1]["state_bytes"] == records[-1]["planned_state_bytes"]  # largest over ranks, both
    cfg = TrainConfig(capacity=300, **flags)
    run = Run.from_config(cfg)
    model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=cfg.seed)
    opt = build_optimizer(model, cfg.lr, cfg.weight_decay)
    for step, rec in enumerate(records):
        lr = lr_at(step, lr=cfg.lr, steps=cfg.lr_steps, schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
                   min_lr=cfg.final_lr)
        res = train_step(model, opt, run.plan(step, 1), run.stream.batch(step), rank=0, group=None,
                         device=torch.device("cpu"), timeout_s=10, lr=lr, max_grad_norm=cfg.max_grad_norm)
        assert res.loss == pytest.approx(rec["loss"], rel=1e-9) and res.grad_norm == pytest.approx(rec["grad_norm"], rel=1e-9)
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(exported) == set(model.state_dict())
    for name, t in model.state_dict().items():
        torch.testing.assert_close(exported[name], t, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
