"""``--tokenizer`` gives the ids transformers' own ``AutoTokenizer`` gives: for a directory with a
``tokenizer.json`` (read by ``tokenizers``) and for one without (read by ``AutoTokenizer``)."""

from __future__ import annotations

import json
import os

import pytest

from hdp.data.load import load_training_data
from hdp.data.prepare import prepare
from hdp.data.tokenizer import load_tokenizer
from tests.data import files

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.timeout(120)


def auto_ids(path: str, docs: list[str]) -> list[list[int]]:
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return [tok(d)["input_ids"] for d in docs if d]


def test_tokenizer_json_directory_matches_auto_tokenizer(tmp_path):
    from tokenizers import Tokenizer

    raw = files.write_bpe_tokenizer(str(tmp_path / "raw"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(os.path.join(raw, "tokenizer.json")),
                                                bos_token="<s>", unk_token="<unk>")
    fast.save_pretrained(str(tmp_path / "hf"))
    docs = files.texts(30)
    ours = load_tokenizer(str(tmp_path / "hf"))
    assert ours.is_rust
    assert [ours.encode(d) for d in docs if d] == auto_ids(str(tmp_path / "hf"), docs)
    assert all(ids[0] == fast.bos_token_id for ids in auto_ids(str(tmp_path / "hf"), docs))


def test_directory_without_tokenizer_json_goes_through_auto_tokenizer(tmp_path):
    from tokenizers import Tokenizer

    raw = files.write_bpe_tokenizer(str(tmp_path / "raw"), vocab_size=300, byte_level=True)
    slow = tmp_path / "gpt2-style"
    slow.mkdir()
    Tokenizer.from_file(os.path.join(raw, "tokenizer.json")).model.save(str(slow))  # vocab.json + merges.txt
    (slow / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", "unk_token": "<unk>"}))
    docs = files.texts(30)
    ours = load_tokenizer(str(slow))
    assert not ours.is_rust and ours.fingerprint == load_tokenizer(str(slow)).fingerprint
    want = auto_ids(str(slow), docs)
    assert [ours.encode(d) for d in docs if d] == want
    src = files.write_jsonl(str(tmp_path / "d.jsonl"), docs)
    prepare(src, str(tmp_path / "store"), tokenizer_path=str(slow), workers=1, progress=False)
    stored = load_training_data(str(tmp_path / "store"), str(slow)).corpus
    assert [stored.read(i, 0, n) for i, n in enumerate(stored.doc_lengths)] == want
