"""``hdp train --hf-model DIR`` end to end, and the configs it refuses.

``hdp train`` trains a config-only Qwen2 directory (random init from --seed) on 3 ranks with rings
and exports it. Plain transformers recomputes its step-0 loss from the same seeded init; then hdp
loads the export (the weights-present path) on 1 rank in this process, and its loss equals the one
transformers computes from the exported directory. 1e-9 relative (both sides run transformers'
modelling code; measured differences are ~1e-15).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, GPT2Config, MistralConfig, Qwen2Config, T5Config  # noqa: E402

from hdp.cli import main  # noqa: E402
from hdp.runtime.config import TrainConfig  # noqa: E402
from hdp.runtime.model.hf_model import build_hf_model  # noqa: E402
from hdp.runtime.train.run import Run  # noqa: E402
from tests.runtime.test_hf_export import hf_loss, loss_at, write_corpus  # noqa: E402
from tests.runtime.test_train_cli import hdp_train, read_metrics  # noqa: E402

pytestmark = pytest.mark.dist
SMALL = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
COMMON = ["--dtype", "float64", "--seed", "4", "--global-batch-tokens", "900", "--max-seq-len", "300", "--no-progress"]


@pytest.mark.timeout(240)
def test_hf_model_trains_on_rings_exports_and_reloads_with_the_losses_of_plain_transformers(tmp_path):
    data, src, out = tmp_path / "data", tmp_path / "qwen2", tmp_path / "export"
    write_corpus(data)
    Qwen2Config(**SMALL, tie_word_embeddings=True).save_pretrained(src)
    a = hdp_train(*COMMON, "--hf-model", str(src), "--data", str(data), "--nproc", "3", "--capacity", "128",
                  "--steps", "1", "--export-hf", str(out), "--metrics", str(tmp_path / "a.jsonl"))
    assert a.returncode == 0, a.stderr
    (ra,) = read_metrics(tmp_path / "a.jsonl")
    assert ra["max_ring"] == 3

    cfg = TrainConfig(hf_model=str(out), dtype="float64", seed=4, global_batch_tokens=900, max_seq_len=300,
                      capacity=300, data=str(data))
    step0 = Run.from_config(cfg).stream.batch(0)
    init = build_hf_model(str(src), dtype=torch.float64, device=torch.device("cpu"), seed=4).hf
    init.set_attn_implementation("sdpa")  # the plain transformers forward from here on
    assert hf_loss(init, step0) == pytest.approx(ra["loss"], rel=1e-9)

    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "hdp" not in json.dumps(config)
    exported = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, attn_implementation="sdpa")
    assert exported.dtype == torch.float64
    reloaded = build_hf_model(str(out), dtype=torch.float64, device=torch.device("cpu"), seed=999)  # seed unused
    hdp_loss = loss_at(cfg, reloaded, 0)
    assert hf_loss(exported, step0) == pytest.approx(hdp_loss, rel=1e-9)
    assert hdp_loss < ra["loss"]  # the export holds the weights after the step on this very batch


BAD = {
    "missing": (None, "does not exist"),
    "no-config": ("empty", "has no config.json"),
    "gpt2": (GPT2Config(vocab_size=256), "model type 'gpt2' is not supported; supported families: llama, qwen2, qwen3, mistral"),
    "t5": (T5Config(vocab_size=256), "t5 is an encoder-decoder"),
    "mistral-window": (MistralConfig(**SMALL, sliding_window=64), "sliding_window 64 is shorter than --max-seq-len 300"),
    "qwen2-window": (Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=64, max_window_layers=1),
                     "layers of type ['sliding_attention']"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(BAD))
def test_unsupported_model_directories_are_one_line_and_exit_2(case, tmp_path, capsys):
    config, message = BAD[case]
    path = tmp_path / case
    if config == "empty":
        path.mkdir()
    elif config is not None:
        config.save_pretrained(path)
    assert main(["train", "--hf-model", str(path), "--steps", "1", "--max-seq-len", "300"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
