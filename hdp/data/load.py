"""``hdp train --data PATH [--tokenizer DIR]``: open any source as a ``Corpus`` of token ids.

* no ``--data``: the Python standard library, byte-level (the default corpus);
* a prepared store: lengths from its index, tokens from its memory map; ``--tokenizer``, when given,
  must be the one the store was prepared with (same fingerprint);
* a text file or directory without ``--tokenizer``: raw bytes read by range from the files (lazy);
* anything else (JSONL, Parquet, datasets, text with a tokenizer): tokenized in this process,
  through the same ``encode_stream`` as ``hdp data prepare``, into memory. Every rank does this, so
  for large data prepare a store once instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from hdp.data.corpus import Corpus, FileCorpus, default_corpus
from hdp.data.encode import encode_stream
from hdp.data.sources import detect, text_files
from hdp.data.store import Store, TokenCorpus
from hdp.data.tokenizer import BYTE_VOCAB_SIZE, ByteTokenizer, load_tokenizer


@dataclass(frozen=True)
class TrainingData:
    corpus: Corpus
    vocab_size: int
    """Ids the data can hold: the model needs at least this many embedding rows."""
    tokenizer: str
    """The tokenizer's name ("bytes" for byte-level)."""
    empty_documents: int
    """Documents skipped because they have no tokens."""
    where: str


def load_training_data(path: str | None, tokenizer_path: str | None = None, text_field: str = "text") -> TrainingData:
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path is not None else None
    if path is None:
        if tokenizer is not None:
            raise ValueError("--tokenizer needs --data: the default corpus is byte-level (give --data FILE or a store)")
        data = TrainingData(default_corpus(), BYTE_VOCAB_SIZE, "bytes", 0, "the Python standard library")
    else:
        data = _load(path, tokenizer, text_field)
    if not any(data.corpus.doc_lengths):
        raise ValueError(f"the corpus ({data.where}) has no non-empty documents: point --data at text")
    return data


def _load(path: str, tokenizer, text_field: str) -> TrainingData:
    source = detect(path, text_field)
    if source.kind == "store":
        store = Store.open(path)
        made_with = store.tokenizer
        if tokenizer is not None and tokenizer.fingerprint != made_with["fingerprint"]:
            raise ValueError(
                f"the store {path!r} was prepared with tokenizer {made_with['name']!r} ({made_with['fingerprint'][:19]}…) "
                f"but --tokenizer {tokenizer.name!r} is {tokenizer.fingerprint[:19]}…: prepare the data again with this "
                "tokenizer, or drop --tokenizer")
        return TrainingData(store.corpus(), int(made_with["vocab_size"]), made_with["name"],
                            int(store.manifest["empty_documents_skipped"]), path)
    if source.kind in ("text-dir", "text-file") and tokenizer is None:
        files = text_files(path)
        corpus = FileCorpus.from_paths(files)
        return TrainingData(corpus, BYTE_VOCAB_SIZE, "bytes", len(files) - len(corpus.paths), path)
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    parts, lengths, empty = [], [], 0
    for enc in encode_stream(tok, source.batches()):
        parts.append(enc.tokens)
        lengths.append(enc.lengths)
        empty += enc.empty
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    lens = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return TrainingData(TokenCorpus.from_arrays(tokens, lens), tok.vocab_size, tok.name, empty, os.fspath(path))


def load_corpus(path: str | None) -> Corpus:
    """``None``: the default corpus; otherwise any ``--data`` source, byte-level."""
    return load_training_data(path).corpus
