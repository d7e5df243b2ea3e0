"""``hdp train --export-hf DIR``: transformers loads the directory and gets the loss hdp trains on.

Run A trains one step on 3 ranks (rings of 2 and 3) and exports; run B trains two steps on 1 rank.
B's step-1 loss is the loss of the weights A exported, on step 1's batch; transformers'
``AutoModelForCausalLM`` recomputes it from the directory (each document its own sequence).
Tolerance 1e-9 relative: transformers' float32 RoPE/RMSNorm moves a float64 loss by ~1e-10.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

from hdp.cli import main  # noqa: E402
from hdp.runtime.config import TrainConfig  # noqa: E402
from hdp.runtime.worker import Run  # noqa: E402
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


@pytest.mark.timeout(240)
def test_exported_directory_loads_in_transformers_and_gives_the_trained_loss(tmp_path):
    data, out = tmp_path / "data", tmp_path / "export"
    write_corpus(data)
    a = hdp_train(*COMMON, "--data", str(data), "--nproc", "3", "--capacity", "128", "--steps", "1",
                  "--export-hf", str(out), "--metrics", str(tmp_path / "a.jsonl"))
    assert a.returncode == 0, a.stderr
    b = hdp_train(*COMMON, "--data", str(data), "--nproc", "1", "--capacity", "300", "--steps", "2",
                  "--metrics", str(tmp_path / "b.jsonl"))
    assert b.returncode == 0, b.stderr
    (ra,), rb = read_metrics(tmp_path / "a.jsonl"), read_metrics(tmp_path / "b.jsonl")
    assert ra["max_ring"] == 3 and ra["loss"] == pytest.approx(rb[0]["loss"], rel=1e-9)

    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, attn_implementation="sdpa")
    assert model.dtype == torch.float64
    step1 = Run.from_config(TrainConfig(model="tiny", seed=3, global_batch_tokens=900, max_seq_len=300,
                                        data=str(data))).stream.batch(1)
    assert hf_loss(model, step1) == pytest.approx(rb[1]["loss"], rel=1e-9)


@pytest.mark.timeout(30)
def test_an_existing_export_directory_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["train", "--steps", "1", "--export-hf", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
