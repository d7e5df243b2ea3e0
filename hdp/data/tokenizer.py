"""Text -> token ids: byte-level (no dependency) or a local Hugging Face tokenizer.

A tokenizer here is three things: ``encode``, ``vocab_size`` (how many embedding rows its ids need)
and ``fingerprint`` (a hash of everything that decides the ids, so a prepared store can refuse a
tokenizer it was not made with). Loading never touches the network: a ``tokenizer.json`` goes
through the ``tokenizers`` library; a directory without one goes through transformers'
``AutoTokenizer`` with ``local_files_only=True``.

Special tokens: ``encode`` adds what the tokenizer's own post-processor adds (a Llama tokenizer
prepends BOS), the same ids ``AutoTokenizer(text)`` gives, so a dumped batch can be checked with
plain transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hdp.data.corpus import VOCAB_SIZE as BYTE_VOCAB_SIZE  # byte-level: every byte value is a token


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    fingerprint: str

    def encode(self, text: str | bytes) -> list[int]: ...

    def encode_many(self, texts: list[str | bytes]) -> list[np.ndarray]:
        """``encode`` of each text, as integer arrays (one library call for the batch where possible)."""
        ...


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255 (``hdp train``'s behaviour without ``--tokenizer``)."""

    name: str = "bytes"
    vocab_size: int = BYTE_VOCAB_SIZE
    fingerprint: str = "bytes"

    def encode(self, text: str | bytes) -> list[int]:
        # surrogateescape: text read from a file with that handler gives back its exact bytes.
        return list(text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape"))

    def encode_many(self, texts: list[str | bytes]) -> list[np.ndarray]:
        return [np.frombuffer(t if isinstance(t, bytes) else t.encode("utf-8", "surrogateescape"), dtype=np.uint8)
                for t in texts]


@dataclass(frozen=True)
class HFTokenizer:
    """A Hugging Face tokenizer from a local path; picklable by path, so worker processes reload it."""

    path: str
    name: str
    vocab_size: int
    fingerprint: str
    backend: Any  # tokenizers.Tokenizer, or a transformers tokenizer when there is no tokenizer.json

    def encode(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if self.is_rust:
            return self.backend.encode(text, add_special_tokens=True).ids
        return list(self.backend(text, add_special_tokens=True)["input_ids"])

    def encode_many(self, texts: list[str | bytes]) -> list[np.ndarray]:
        texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in texts]
        if self.is_rust:
            return [np.asarray(e.ids, dtype=np.int64) for e in self.backend.encode_batch(texts, add_special_tokens=True)]
        return [np.asarray(ids, dtype=np.int64) for ids in self.backend(texts, add_special_tokens=True)["input_ids"]]

    @property
    def is_rust(self) -> bool:
        """A ``tokenizers.Tokenizer`` (from tokenizer.json), not a transformers tokenizer."""
        return type(self.backend).__module__.startswith("tokenizers")

    def __reduce__(self):  # the Rust object does not travel; the path does
        return (load_tokenizer, (self.path,))


def load_tokenizer(path: str | None) -> Tokenizer:
    """``None``: bytes; a ``tokenizer.json`` file or a directory holding one: ``tokenizers``; any other
    directory: transformers' ``AutoTokenizer`` (local files only)."""
    if path is None:
        return ByteTokenizer()
    if not os.path.exists(path):
        raise ValueError(f"--tokenizer {path!r} does not exist: give a tokenizer.json or a local tokenizer directory")
    file = path if os.path.isfile(path) else os.path.join(path, "tokenizer.json")
    if os.path.isfile(file):
        return _from_tokenizer_json(path, file)
    return _from_auto_tokenizer(path)


def _from_tokenizer_json(path: str, file: str) -> HFTokenizer:
    try:
        from tokenizers import Tokenizer as RustTokenizer
    except ModuleNotFoundError:
        raise ValueError("--tokenizer needs the 'tokenizers' package: pip install -e '.[hf]'") from None
    try:
        backend = RustTokenizer.from_file(file)
    except Exception as e:  # noqa: BLE001 - the library raises plain Exception on a bad file
        raise ValueError(_not_a_tokenizer(file) or f"cannot load tokenizer {file!r}: {str(e).splitlines()[0][:200]}"
                         ) from None
    # to_str() is the canonical serialisation: model, normaliser, pre-tokeniser, post-processor, added tokens.
    digest = hashlib.sha256(backend.to_str().encode()).hexdigest()
    return HFTokenizer(path, os.path.basename(os.path.normpath(path)), backend.get_vocab_size(with_added_tokens=True),
                       f"sha256:{digest}", backend)


def _not_a_tokenizer(file: str) -> str | None:
    """Why ``file`` is not a tokenizer.json at all (not JSON, or JSON without a tokenizer's ``model``,
    e.g. a model's config.json), naming what was expected; None when it looks like one (the library's
    own message then says what is wrong inside)."""
    expected = "give a tokenizer.json or a directory holding one (a local Hugging Face tokenizer)"
    try:
        with open(file, "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return f"--tokenizer {file!r} is not a tokenizer.json (not JSON): {expected}"
    if isinstance(doc, dict) and isinstance(doc.get("model"), dict):
        return None
    what = "a model's config.json" if isinstance(doc, dict) and ("model_type" in doc or "architectures" in doc) else \
        "JSON without a tokenizer's 'model'"
    return f"--tokenizer {file!r} is {what}, not a tokenizer.json: {expected}"


def _from_auto_tokenizer(path: str) -> HFTokenizer:
    try:
        from transformers import AutoTokenizer
    except ModuleNotFoundError:
        raise ValueError(f"{path!r} has no tokenizer.json; loading it needs transformers: pip install -e '.[hf]'") from None
    try:
        backend = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a directory it cannot use
        raise ValueError(f"cannot load a tokenizer from {path!r}: {str(e).splitlines()[0][:200]}") from None
    if getattr(backend, "is_fast", False):
        text = backend.backend_tokenizer.to_str()
    else:  # a slow tokenizer: its files decide its ids
        h = hashlib.sha256()
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full) and ("token" in name or name.endswith((".model", ".txt", ".json"))):
                with open(full, "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
        text = h.hexdigest()
    digest = hashlib.sha256(text.encode()).hexdigest()
    return HFTokenizer(path, os.path.basename(os.path.normpath(path)), len(backend), f"sha256:{digest}", backend)


def check_vocab(tokenizer_name: str, vocab_size: int, embedding_rows: int, model: str) -> None:
    """Every id the data can hold must have an embedding row."""
    if vocab_size > embedding_rows:
        what = "byte-level data" if tokenizer_name == "bytes" else f"tokenizer {tokenizer_name!r}"
        raise ValueError(f"{what} has {vocab_size:,} tokens but model {model} has {embedding_rows:,} embedding rows: "
                         "use a model with at least as many rows, or a smaller tokenizer")
