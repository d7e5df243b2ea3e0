"""``hdp train --export-hf DIR``: transformers loads the directory and gets the loss hdp trains on.

``hdp train`` trains one step on 3 ranks (rings of 2 and 3) and exports. In this process the same
step runs on 1 rank: the exported tensors must be its updated weights (1e-9), and its step-1 loss
(what a second step of training would report) must be what transformers' ``AutoModelForCausalLM``
computes from the directory on step 1's batch (each document its own sequence). Tolerance 1e-9
relative: transformers' float32 RoPE/RMSNorm moves a float64 loss by ~1e-10.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

from safetensors.torch import load_file  # noqa: E402

from hdp.cli import main  # noqa: E402
from hdp.plan import get_model  # noqa: E402
from hdp.runtime.config import TrainConfig  # noqa: E402
from hdp.runtime.model.decoder import build_model  # noqa: E402
from hdp.runtime.train.step import build_optimizer, forward_backward, train_step  # noqa: E402
from hdp.runtime.train.run import Run  # noqa: E402
from tests.runtime.test_train_cli import hdp_train, read_metrics  # noqa: E402

pytestmark = pytest.mark.dist
COMMON = ["--model", "tiny", "--dtype", "float64", "--seed", "3", "--global-batch-tokens", "900", "--max-seq-len", "300",
          "--no-progress"]


def write_corpus(path) -> None:
    rng = random.Random(0)
    words = ["ring", "rank", "plan", "token", "attention", "batch", "layer", "gradient", "mesh", "pack"]
    path.mkdir()
    for i in range(6):
        (path / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(rng.randrange(20, 120))))


def hf_loss(model, batch) -> float:
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for i, n in enumerate(batch.lengths):
            ids = torch.tensor(list(batch.read(i, 0, n)))
            logits = model(input_ids=ids[None]).logits[0]
            total += F.cross_entropy(logits[:-1].double(), ids[1:], reduction="sum")
            count += n - 1
    return float(total / count)


def one_rank_steps(config: TrainConfig, model, steps: int) -> list[float]:
    """``steps`` steps of hdp on one rank in this process (no process group); their losses."""
    run, cpu = Run.from_config(config), torch.device("cpu")
    opt = build_optimizer(model, config.lr, config.weight_decay)
    return [train_step(model, opt, run.plan(s, 1), run.stream.batch(s), rank=0, group=None, device=cpu,
                       timeout_s=10).loss for s in range(steps)]


@pytest.mark.timeout(240)
def test_exported_directory_loads_in_transformers_and_gives_the_trained_loss(tmp_path):
    data, out = tmp_path / "data", tmp_path / "export"
    write_corpus(data)
    a = hdp_train(*COMMON, "--data", str(data), "--nproc", "3", "--capacity", "128", "--steps", "1",
                  "--export-hf", str(out), "--metrics", str(tmp_path / "a.jsonl"))
    assert a.returncode == 0, a.stderr
    (ra,) = read_metrics(tmp_path / "a.jsonl")
    assert ra["max_ring"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2

    cfg = TrainConfig(model="tiny", dtype="float64", seed=3, global_batch_tokens=900, max_seq_len=300, capacity=300,
                      data=str(data))
    model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=3)
    (loss0,) = one_rank_steps(cfg, model, 1)
    assert loss0 == pytest.approx(ra["loss"], rel=1e-9)
    exported = load_file(str(out / "model.safetensors"))
    assert set(exported) == set(model.state_dict())
    for name, t in model.state_dict().items():  # the trained weights, not the initial ones
        torch.testing.assert_close(exported[name], t, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")

    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, attn_implementation="sdpa")
    assert hf.dtype == torch.float64
    step1 = Run.from_config(cfg).stream.batch(1)
    assert hf_loss(hf, step1) == pytest.approx(loss_at(cfg, model, 1), rel=1e-9)


def loss_at(config: TrainConfig, model, step: int) -> float:
    """hdp's loss of ``model`` on ``step``'s batch (one rank, no update)."""
    run = Run.from_config(config)
    plan = run.plan(step, 1)
    loss, _, _ = forward_backward(model, plan, run.stream.batch(step), 0, torch.device("cpu"), timeout_s=10)
    model.zero_grad(set_to_none=True)
    return float(loss)


@pytest.mark.timeout(30)
def test_an_existing_export_directory_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["train", "--steps", "1", "--export-hf", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.timeout(60)
def test_export_with_a_tokenizer_gives_the_same_token_ids(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    from hdp.runtime.model.hf_export import export_hf

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["ring rank plan token attention"] * 20, trainers.BpeTrainer(vocab_size=64,
                                                                                          special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    model = build_model(get_model("tiny"), dtype=torch.float32, device=torch.device("cpu"), seed=0)
    for source, name in ((tmp_path / "tokenizer.json", "from-file"), (None, "from-dir")):
        if source is None:  # a tokenizer directory, as written by the first export
            source = tmp_path / "from-file"
        out = export_hf(model, str(tmp_path / name), tokenizer=str(source))
        loaded = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
        assert loaded("rank plan ring").input_ids == tok.encode("rank plan ring").ids
        assert AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True) is not None
