"""A prepared token store: documents tokenized once, read by range from a memory map.

Layout of a store directory (``hdp data prepare`` writes it; docs/data.md):

* ``tokens.bin``: every document's token ids back to back, raw little-endian ``dtype`` (``uint16``
  when the vocabulary fits, else ``uint32``), no header;
* ``offsets.npy``: int64 ``[num_documents + 1]``; document ``i`` is ``tokens[offsets[i]:offsets[i+1]]``;
* ``lengths.npy``: int64 ``[num_documents]``, ``diff(offsets)``: what the planner needs, without
  touching ``tokens.bin``;
* ``manifest.json``: format, dtype, counts, empty documents skipped, the tokenizer's name,
  vocabulary size and fingerprint, and the source it was made from.

Training opens ``tokens.bin`` with ``numpy.memmap``: a rank's ``read`` touches only the pages of the
ranges its plan gives it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT = "hdp.tokens/1"
MANIFEST, TOKENS, OFFSETS, LENGTHS = "manifest.json", "tokens.bin", "offsets.npy", "lengths.npy"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def is_store(path: str) -> bool:
    manifest = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest):
        return False
    try:
        with open(manifest) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class TokenCorpus:
    """Documents as one flat token array plus offsets (a memory map for a store, an array in memory
    otherwise): the ``Corpus`` protocol over token ids."""

    tokens: np.ndarray
    offsets: np.ndarray
    doc_lengths: tuple[int, ...]

    @classmethod
    def from_arrays(cls, tokens: np.ndarray, lengths: np.ndarray) -> "TokenCorpus":
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(tokens, offsets, tuple(lengths.tolist()))

    def read(self, doc: int, start: int, end: int) -> list[int]:
        n = self.doc_lengths[doc]
        if not 0 <= start <= end <= n:
            raise ValueError(f"tokens [{start}, {end}) are outside document {doc} of length {n}")
        base = int(self.offsets[doc])
        return self.tokens[base + start: base + end].tolist()


@dataclass(frozen=True)
class Store:
    path: str
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str) -> "Store":
        try:
            with open(os.path.join(path, MANIFEST)) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path!r} is not a prepared store ({e}): make one with hdp data prepare") from None
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path!r} has format {manifest.get('format')!r}, this hdp reads {FORMAT}: prepare it again")
        return cls(path, manifest)

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.manifest["tokenizer"]

    def corpus(self) -> TokenCorpus:
        """Lengths from the index; tokens as a read-only memory map (nothing read yet)."""
        try:
            lengths = np.load(os.path.join(self.path, LENGTHS))
            offsets = np.load(os.path.join(self.path, OFFSETS))
            num_tokens = int(offsets[-1])
            tokens = (np.memmap(os.path.join(self.path, TOKENS), dtype=np.dtype(self.manifest["dtype"]), mode="r",
                                shape=(num_tokens,)) if num_tokens else np.zeros(0, dtype=self.manifest["dtype"]))
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise ValueError(f"the store {self.path!r} is damaged ({e}): prepare it again") from None
        if len(lengths) != self.manifest["num_documents"] or num_tokens != self.manifest["num_tokens"]:
            raise ValueError(f"the store {self.path!r} does not match its manifest: prepare it again")
        return TokenCorpus(tokens, offsets, tuple(lengths.tolist()))
