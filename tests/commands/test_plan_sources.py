"""Plan what ``hdp train`` would (issue 23, item 14): ``hdp plan``/``hdp simulate --hf-model DIR --data
PATH`` see train's batches and model shape, with neither torch nor transformers; ``hdp plot --lengths``
takes a token store; a tokenizer path that is no tokenizer says what was expected. Each refusal is
one line, exit 2, and timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.run_cli import run_main
from hdp.plan import Plan
from hdp.plan.cost.hf_config import load_hf_shape

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BATCH = ["--global-batch-tokens", "2048", "--max-len", "256", "--seed", "3"]
REFUSAL_S = 5.0
"""In-process refusals read a few small files: far under a second even on a busy machine."""


@pytest.fixture
def corpus(tmp_path):
    """A JSONL corpus of documents of 4..360 bytes (some longer than --max-len 256: train cuts them)."""
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for i in range(60):
            f.write(json.dumps({"text": "abcd" * (i * 37 % 90 + 1)}) + "\n")
    return str(path)


@pytest.fixture
def llama(tmp_path):
    from transformers import LlamaConfig

    path = tmp_path / "my_llama"
    LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256).save_pretrained(path)
    return str(path)


def refused(capsys, *argv: str) -> str:
    start = time.perf_counter()
    code, out, err = run_main(capsys, *argv)
    seconds = time.perf_counter() - start
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert seconds < REFUSAL_S, seconds
    return lines[0]


def test_plan_with_hf_model_and_data_plans_the_batches_and_shape_train_sees(capsys, tmp_path, corpus, llama):
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.model.source import model_shape
    from hdp.runtime.train.run import Run

    config = TrainConfig(hf_model=llama, data=corpus, global_batch_tokens=2048, max_seq_len=256, seed=3, capacity=512)
    run = Run.from_config(config)
    out = tmp_path / "plan.json"
    seen = []
    for step in (0, 1, 5):
        code, _, err = run_main(capsys, "plan", "--hf-model", llama, "--data", corpus, *BATCH, "--step", str(step),
                                "--ranks", "4", "--strategy", "hdp", "--out", str(out), "--json")
        assert code == 0, err
        lengths = [s.length for s in Plan.from_json(out.read_text()).sequences]
        assert lengths == run.stream.batch(step).lengths
        assert max(lengths) == 256 and sum(lengths) == 2048  # documents cut at --max-len, as train cuts them
        seen.append(lengths)
    assert seen[0] != seen[1]  # --step picks the step
    # the shape: the HF config's widths and counts, equal to what train's cost model uses
    shape = load_hf_shape(llama)
    assert shape == model_shape(config) == run.cost.model
    with open(os.path.join(llama, "config.json")) as f:
        hf = json.load(f)
    assert (shape.hidden_size, shape.num_layers, shape.num_heads, shape.num_kv_heads, shape.ffn_size,
            shape.vocab_size) == (hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"],
                                  hf["num_key_value_heads"], hf["intermediate_size"], hf["vocab_size"])
    # hdp simulate --data times train's steps 0..--steps-1
    code, out_json, err = run_main(capsys, "simulate", "--hf-model", llama, "--data", corpus, *BATCH, "--steps", "2",
                                   "--ranks", "4", "--strategies", "hdp", "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out_json)["model"] == f"hf:{llama}"


@pytest.mark.parametrize("family", ["qwen3", "mixtral", "qwen3_moe"])
def test_config_json_reads_the_shape_transformers_config_gives(tmp_path, family):
    """A decoupled head_dim (Qwen3) and the experts of an MoE config: the json reading equals the runtime's
    (``hf_model.model_shape`` of transformers' config object)."""
    import transformers

    from hdp.runtime.model.hf_model import model_shape

    common = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    config = {"qwen3": lambda: transformers.Qwen3Config(**common, head_dim=16),
              "mixtral": lambda: transformers.MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2),
              "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**common, head_dim=16, num_experts=4,
                                                               num_experts_per_tok=2, moe_intermediate_size=24)}[family]()
    config.save_pretrained(tmp_path / family)
    path = str(tmp_path / family)
    shape = load_hf_shape(path)
    assert shape == model_shape(config, f"hf:{path}")
    if family != "mixtral":
        assert shape.num_heads * shape.head_dim == 64  # the heads' width, not hidden_size 32
    if family != "qwen3":
        assert (shape.num_experts, shape.top_k) == (4, 2)
        assert shape.ffn_size == (24 if family == "qwen3_moe" else 48)  # each expert's width


def test_plan_and_simulate_with_hf_model_and_data_never_import_torch(corpus, llama):
    code = ("import sys; from hdp.cli import main; "
            f"rc = main(['plan', '--hf-model', {llama!r}, '--data', {corpus!r}, '--ranks', '4', '--json', "
            "'--global-batch-tokens', '2048', '--max-len', '256']); "
            f"rc += main(['simulate', '--hf-model', {llama!r}, '--data', {corpus!r}, '--ranks', '4', '--json', "
            "'--global-batch-tokens', '2048', '--max-len', '256', '--strategies', 'hdp', '--quiet']); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert rc == 0 and not bad, (rc, bad)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr


def test_bad_hf_model_data_and_tokenizer_paths_are_one_line(capsys, tmp_path, corpus, llama):
    (tmp_path / "empty").mkdir()
    config_only = os.path.join(llama, "config.json")
    lines = [
        refused(capsys, "plan", "--hf-model", str(tmp_path / "nope"), "--ranks", "4"),
        refused(capsys, "plan", "--hf-model", str(tmp_path / "empty"), "--ranks", "4"),
        refused(capsys, "simulate", "--hf-model", str(tmp_path / "empty"), "--ranks", "4"),
        refused(capsys, "plan", "--data", str(tmp_path / "nope.jsonl"), "--ranks", "4"),
        refused(capsys, "plan", "--tokenizer", config_only, "--ranks", "4"),
        refused(capsys, "plan", "--data", corpus, "--tokenizer", config_only, "--ranks", "4"),
        refused(capsys, "simulate", "--data", corpus, "--tokenizer", config_only, "--ranks", "4"),
    ]
    assert "does not exist" in lines[0] and "has no config.json" in lines[1] == lines[2].replace("simulate", "plan")
    assert "nope.jsonl" in lines[3]
    assert "--tokenizer and --text-field read --data" in lines[4]
    for line in lines[5:]:  # before: the JSON parser's "expected `,` or `}` at line 1 column ..."
        assert "a model's config.json, not a tokenizer.json" in line and "a directory holding one" in line
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"hidden_size": 32')
    assert "cannot read config.json" in refused(capsys, "plan", "--hf-model", str(tmp_path / "broken"))
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama", "hidden_size": 32}')
    assert "num_hidden_layers" in refused(capsys, "plan", "--hf-model", str(tmp_path / "broken"))


def test_tokenizer_messages_name_what_was_expected(tmp_path):
    from hdp.data.tokenizer import load_tokenizer

    cases = {"config.json": ('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}', "a model's config.json"),
             "other.json": ('{"vocab": [1, 2]}', "JSON without a tokenizer's 'model'"),
             "tokenizer.model": ("\x00\x01 binary", "not JSON")}
    for name, (text, said) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError) as e:
            load_tokenizer(str(tmp_path / name))
        assert said in str(e.value) and "give a tokenizer.json or a directory holding one" in str(e.value)


def test_plot_lengths_takes_a_token_store_and_refuses_other_paths_in_one_line(capsys, tmp_path, corpus):
    store = tmp_path / "store"
    code, _, err = run_main(capsys, "data", "prepare", corpus, "--out", str(store), "--no-progress", "--workers", "1")
    assert code == 0, err
    png = tmp_path / "lengths.png"
    code, out, err = run_main(capsys, "plot", "--lengths", str(store), "--out", str(png))
    assert code == 0, err  # before: "cannot read lengths file ...: Is a directory"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from hdp.data.store import Store
    from hdp.plot.lengths import read_lengths_source

    lengths = read_lengths_source(str(store))
    assert lengths == list(Store.open(str(store)).corpus().doc_lengths) and len(lengths) == 60
    (tmp_path / "binary").write_bytes(bytes(range(128, 256)))
    said = [refused(capsys, "plot", "--lengths", str(tmp_path), "--out", str(png)),
            refused(capsys, "plot", "--lengths", str(tmp_path / "binary"), "--out", str(png)),
            refused(capsys, "plot", "--lengths", str(tmp_path / "missing"), "--out", str(png))]
    assert "is a directory but not a token store" in said[0]
    assert "is not text" in said[1]
    assert "No such file" in said[2]
