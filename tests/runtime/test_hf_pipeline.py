"""``hdp train --hf-model DIR --pp 2``: stages of a transformers causal LM (``hf_stage``) in the 1F1B executor.

In process: each stage of a 3-layer Llama holds only its modules, under the whole model's names and
with its values, and chaining the stages' forwards gives the whole model's logits. The command: 4
processes (2 pipelines of 2 stages, rings of 2 HDP ranks) equal one process on the same global
batches (float64): loss and gradient norm to 1e-9 relative, every parameter after 2 steps (the
--export-hf of the gathered stages) to 1e-9. What the HF pipeline does not run is one line.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402

from hdp.runtime.attention.dispatch import MicroBatchAttention  # noqa: E402
from hdp.runtime.attention.layout import AttentionLayout, Span  # noqa: E402
from hdp.runtime.config import TrainConfig  # noqa: E402
from hdp.runtime.model.hf_model import build_hf_model  # noqa: E402
from hdp.runtime.optim.lr_schedule import lr_at  # noqa: E402
from hdp.runtime.train.run import Run  # noqa: E402
from hdp.runtime.train.step import build_optimizer, train_step  # noqa: E402
from tests.run_cli import run_main  # noqa: E402
from tests.runtime.test_train_cli import hdp_train, read_metrics  # noqa: E402

SMALL = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, tie_word_embeddings=False)
FLAGS = dict(dtype="float64", seed=3, global_batch_tokens=700, max_seq_len=300, steps=2)
CPU = torch.device("cpu")


def test_stages_hold_their_modules_and_chain_to_the_whole_model():
    cfg = LlamaConfig(**SMALL)
    whole = build_hf_model(cfg, dtype=torch.float64, device=CPU, seed=1)
    stages = [build_hf_model(cfg, dtype=torch.float64, device=CPU, seed=1, stage=(s, 2)) for s in range(2)]
    values = dict(whole.named_parameters())
    assert [[int(n) for n, _ in m.layers.named_children()] for m in stages] == [[0, 1], [2]]
    assert stages[0].hf.lm_head is None and stages[0].hf.model.norm is None and stages[1].hf.model.embed_tokens is None
    assert [n for m in stages for n, _ in m.named_parameters()] == list(values)  # each once, in the whole order
    for m in stages:
        for n, p in m.named_parameters():
            assert torch.equal(p, values[n]), n
    span = Span(0, 0, 12, 0)
    layout = MicroBatchAttention(AttentionLayout(0, 0, 12, (span,), (span,), ()))
    tokens, positions = torch.randint(0, 256, (12,), generator=torch.Generator().manual_seed(0)), torch.arange(12)
    hidden = stages[0](tokens, positions, layout)
    assert hidden.shape == (12, 32)
    torch.testing.assert_close(stages[1](hidden, positions, layout), whole(tokens, positions, layout),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("extra, flags, says", [
    ({}, ["--tp", "2"], "--hf-model and --tp 2"),
    (dict(tie_word_embeddings=True), [], "tied embeddings"),
])
def test_what_the_hf_pipeline_does_not_run_is_one_line(capsys, tmp_path, extra, flags, says):
    LlamaConfig(**{**SMALL, **extra}).save_pretrained(tmp_path / "m")
    nproc = "4" if flags else "2"
    code, _, err = run_main(capsys, "train", "--nproc", nproc, "--pp", "2", "--steps", "1", "--hf-model",
                            str(tmp_path / "m"), *flags)
    assert code == 2 and says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_hf_pp2_on_4_processes_equals_one_process(tmp_path):
    src, out, metrics = tmp_path / "llama", tmp_path / "export", tmp_path / "m.jsonl"
    LlamaConfig(**SMALL).save_pretrained(src)
    proc = hdp_train("--hf-model", str(src), "--nproc", "4", "--pp", "2", "--capacity", "160", "--no-progress",
                     "--metrics", str(metrics), "--export-hf", str(out),
                     *(x for k, v in FLAGS.items() for x in (f"--{k.replace('_', '-')}", str(v))), timeout=240)
    assert proc.returncode == 0, proc.stderr
    records = read_metrics(metrics)
    assert all(r["pp"] == 2 and r["max_ring"] == 2 for r in records)  # a sequence split over 2 pipelines
    assert all(r["state_bytes"] == r["planned_state_bytes"] for r in records)
    cfg = TrainConfig(hf_model=str(src), capacity=300, **FLAGS)
    model = build_hf_model(str(src), dtype=torch.float64, device=CPU, seed=cfg.seed)
    run, opt = Run.from_config(cfg), build_optimizer(model, cfg.lr, cfg.weight_decay)
    for step, rec in enumerate(records):
        lr = lr_at(step, lr=cfg.lr, steps=cfg.lr_steps, schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
                   min_lr=cfg.final_lr)
        res = train_step(model, opt, run.plan(step, 1), run.stream.batch(step), rank=0, group=None, device=CPU,
                         timeout_s=10, lr=lr, max_grad_norm=cfg.max_grad_norm)
        assert rec["loss"] == pytest.approx(res.loss, rel=1e-9)
        assert rec["grad_norm"] == pytest.approx(res.grad_norm, rel=1e-9)
    params = model.hf.state_dict()
    exported = load_file(str(out / "model.safetensors"))
    assert set(exported) == set(params)
    for name, t in params.items():
        torch.testing.assert_close(exported[name], t, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
