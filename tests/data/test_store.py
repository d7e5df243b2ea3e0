"""Sources, tokenizers and the prepared store: every input format gives the same documents, a store
holds exactly the ids the in-memory path computes, bad input is one clear line and leaves nothing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from hdp.cli import main
from hdp.data.load import load_training_data
from hdp.data.prepare import prepare
from hdp.data.store import Store
from hdp.data.tokenizer import ByteTokenizer, load_tokenizer
from tests.data import files

pytestmark = pytest.mark.timeout(60)
WRITERS = {
    "jsonl": lambda d, docs: files.write_jsonl(str(d / "docs.jsonl"), docs),
    "parquet": lambda d, docs: files.write_parquet(str(d / "docs.parquet"), docs),
    "datasets": lambda d, docs: files.write_datasets_dir(str(d / "ds"), docs),
    "text-dir": lambda d, docs: files.write_text_dir(str(d / "txt"), docs),
}


def documents(corpus) -> list[list[int]]:
    return [list(corpus.read(i, 0, n)) for i, n in enumerate(corpus.doc_lengths)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return files.write_bpe_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("kind", list(WRITERS))
@pytest.mark.parametrize("use_tokenizer", [False, True])
def test_every_format_and_its_store_hold_the_same_ids(kind, use_tokenizer, tokenizer_dir, tmp_path):
    docs = files.texts()
    src = WRITERS[kind](tmp_path, docs)
    tok_path = tokenizer_dir if use_tokenizer else None
    tok = load_tokenizer(tok_path)
    want = [tok.encode(d) for d in docs if d]  # the tokenizer itself, document by document
    direct = load_training_data(src, tok_path)
    assert documents(direct.corpus) == want
    assert direct.empty_documents == sum(1 for d in docs if not d) > 0
    manifest = prepare(src, str(tmp_path / "store"), tokenizer_path=tok_path, workers=1, progress=False)
    stored = load_training_data(str(tmp_path / "store"), tok_path)
    assert documents(stored.corpus) == want
    assert manifest["num_documents"] == len(want) and manifest["num_tokens"] == sum(map(len, want))
    assert manifest["empty_documents_skipped"] == direct.empty_documents
    assert manifest["tokenizer"]["fingerprint"] == tok.fingerprint and stored.vocab_size == tok.vocab_size
    assert manifest["source"]["kind"] == kind


def test_store_layout_is_the_documented_one(tokenizer_dir, tmp_path):
    docs = files.texts(30)
    src = files.write_jsonl(str(tmp_path / "d.jsonl"), docs)
    prepare(src, str(tmp_path / "s"), tokenizer_path=tokenizer_dir, progress=False)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["format"] == "hdp.tokens/1" and m["dtype"] == "<u2"
    lengths, offsets = np.load(tmp_path / "s" / "lengths.npy"), np.load(tmp_path / "s" / "offsets.npy")
    tokens = np.fromfile(tmp_path / "s" / "tokens.bin", dtype="<u2")
    assert lengths.dtype == offsets.dtype == np.int64 and offsets[0] == 0 and (np.diff(offsets) == lengths).all()
    assert len(tokens) == offsets[-1] == m["num_tokens"] and len(lengths) == m["num_documents"]
    tok = load_tokenizer(tokenizer_dir)
    want = [tok.encode(d) for d in docs if d]
    assert [tokens[offsets[i]:offsets[i + 1]].tolist() for i in range(len(lengths))] == want
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_worker_processes_give_the_same_store_as_one_process(tokenizer_dir, tmp_path):
    docs = files.texts(2500, seed=3)  # 3 batches of 1,000: order across workers matters
    src = files.write_jsonl(str(tmp_path / "d.jsonl"), docs)
    prepare(src, str(tmp_path / "one"), tokenizer_path=tokenizer_dir, workers=1, progress=False)
    prepare(src, str(tmp_path / "two"), tokenizer_path=tokenizer_dir, workers=2, progress=False)
    for name in ("tokens.bin", "lengths.npy", "offsets.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_byte_level_text_directory_store_equals_the_raw_files(tmp_path):
    docs = files.texts(20)
    src = files.write_text_dir(str(tmp_path / "txt"), docs)
    raw = load_training_data(src)  # byte-level, lazy file reads (today's --data DIR)
    prepare(src, str(tmp_path / "s"), progress=False)
    assert documents(Store.open(str(tmp_path / "s")).corpus()) == documents(raw.corpus)
    assert documents(raw.corpus) == [list(d.encode()) for d in docs if d]


def test_fingerprint_identifies_the_tokenizer(tokenizer_dir, tmp_path):
    a, again = load_tokenizer(tokenizer_dir), load_tokenizer(os.path.join(tokenizer_dir, "tokenizer.json"))
    other = load_tokenizer(files.write_bpe_tokenizer(str(tmp_path / "other"), vocab_size=100))
    assert a.fingerprint == again.fingerprint != other.fingerprint != ByteTokenizer().fingerprint


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_one_line(err: str, *parts: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for p in parts:
        assert p in err, err


def test_prepare_bad_input_is_one_line_exit_2_and_leaves_nothing(tokenizer_dir, tmp_path, capsys):
    docs = files.texts(10)
    jsonl = files.write_jsonl(str(tmp_path / "d.jsonl"), docs, field="body")
    code, err = run_cli(capsys, "data", "prepare", jsonl, "--out", str(tmp_path / "s"), "--no-progress")
    assert code == 2
    assert_one_line(err, "no field 'text'", "'id', 'body', 'meta'", "--text-field")
    parquet = files.write_parquet(str(tmp_path / "d.parquet"), docs, field="content")
    code, err = run_cli(capsys, "data", "prepare", parquet, "--out", str(tmp_path / "s"), "--no-progress")
    assert code == 2
    assert_one_line(err, "no field 'text'", "'id', 'content'")
    ds = files.write_datasets_dir(str(tmp_path / "ds"), docs, field="content")
    code, err = run_cli(capsys, "data", "prepare", ds, "--out", str(tmp_path / "s"), "--no-progress")
    assert code == 2
    assert_one_line(err, "no field 'text'", "'id', 'content'")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes((tmp_path / "d.parquet").read_bytes()[:200])  # truncated
    code, err = run_cli(capsys, "data", "prepare", str(broken), "--out", str(tmp_path / "s"), "--no-progress")
    assert code == 2
    assert_one_line(err, "cannot read Parquet file", "broken.parquet")
    code, err = run_cli(capsys, "data", "prepare", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "s"))
    assert code == 2
    assert_one_line(err, "does not exist")
    assert sorted(os.listdir(tmp_path)) == ["broken.parquet", "d.jsonl", "d.parquet", "ds"]  # no store, no temp dir


def test_prepare_never_overwrites(tmp_path, capsys):
    src = files.write_jsonl(str(tmp_path / "d.jsonl"), files.texts(10))
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_cli(capsys, "data", "prepare", src, "--out", str(out), "--no-progress")
    assert code == 2
    assert_one_line(err, "already exists")
    assert os.listdir(out) == ["keep.txt"]


def test_prepare_prints_a_summary_and_the_store_trains(tokenizer_dir, tmp_path, capsys):
    src = files.write_jsonl(str(tmp_path / "d.jsonl"), files.texts(10))
    assert main(["data", "prepare", src, "--out", str(tmp_path / "s"), "--tokenizer", tokenizer_dir,
                 "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "documents" in out and "empty skipped" in out


def test_train_bad_data_is_one_line_exit_2_before_any_process(tokenizer_dir, tmp_path, capsys):
    src = files.write_jsonl(str(tmp_path / "d.jsonl"), files.texts(20))
    prepare(src, str(tmp_path / "s"), tokenizer_path=tokenizer_dir, progress=False)
    other = files.write_bpe_tokenizer(str(tmp_path / "other"), vocab_size=100)
    big = files.write_bpe_tokenizer(str(tmp_path / "big"), vocab_size=300, byte_level=True)
    common = ["train", "--nproc", "2", "--steps", "1", "--no-progress", "--dump-batches", str(tmp_path / "dump.jsonl")]
    cases = [
        (["--data", str(tmp_path / "s"), "--tokenizer", other], ["was prepared with tokenizer", "--tokenizer 'other'"]),
        (["--data", src, "--tokenizer", big], ["tokenizer 'big' has 300 tokens", "tiny has 256 embedding rows"]),
        (["--data", src, "--text-field", "body"], ["no field 'body'", "'id', 'text', 'meta'"]),
        (["--data", str(tmp_path / "missing.parquet")], ["does not exist"]),
        (["--data", src, "--tokenizer", str(tmp_path / "no-tokenizer")], ["--tokenizer", "does not exist"]),
        (["--tokenizer", other], ["--tokenizer needs --data"]),
        (["--data", str(tmp_path / "bad.jsonl")], ["bad.jsonl:2 is not valid JSON"]),
        (["--data", str(tmp_path / "splits")], ["holds the splits", "no 'train'"]),
    ]
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    import datasets

    datasets.DatasetDict({"a": datasets.Dataset.from_dict({"text": ["x"]}),
                          "b": datasets.Dataset.from_dict({"text": ["y"]})}).save_to_disk(str(tmp_path / "splits"))
    for args, parts in cases:
        code, err = run_cli(capsys, *common, *args)
        assert code == 2, (args, err)
        assert_one_line(err, *parts)
    assert not (tmp_path / "dump.jsonl").exists()
