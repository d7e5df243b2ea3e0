"""Corpora: documents addressed by index, read by token range.

Here the byte-level ones (tokens are bytes 0..255); token-id corpora (a prepared store's memory map,
or a tokenized file in memory) are ``hdp.data.store.TokenCorpus``, opened by ``hdp.data.load``.

The default corpus needs no download: the Python standard library's own source files (found with
``sysconfig``, installed packages excluded), sorted by path, one document per file. Reading by range
lets every rank materialise only the tokens its plan gives it.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from typing import Protocol, Sequence

VOCAB_SIZE = 256
"""Byte-level tokens: every byte value is a token."""


class Corpus(Protocol):
    """Documents with known lengths, readable by token range (``bytes`` is a sequence of byte tokens)."""

    @property
    def doc_lengths(self) -> Sequence[int]: ...

    def read(self, doc: int, start: int, end: int) -> Sequence[int]: ...


@dataclass(frozen=True)
class FileCorpus:
    """One document per file; lengths from the file sizes, so nothing is read until it is needed."""

    paths: tuple[str, ...]
    doc_lengths: tuple[int, ...]

    @classmethod
    def from_paths(cls, paths: Sequence[str]) -> "FileCorpus":
        sized = [(p, os.path.getsize(p)) for p in paths]
        sized = [(p, n) for p, n in sized if n > 0]  # an empty file is not a document
        return cls(tuple(p for p, _ in sized), tuple(n for _, n in sized))

    def read(self, doc: int, start: int, end: int) -> bytes:
        with open(self.paths[doc], "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise ValueError(f"{self.paths[doc]} changed while training: expected {end - start} bytes at {start}")
        return data


@dataclass(frozen=True)
class BytesCorpus:
    """Documents held in memory (tests, small experiments)."""

    docs: tuple[bytes, ...]

    @property
    def doc_lengths(self) -> tuple[int, ...]:
        return tuple(len(d) for d in self.docs)

    def read(self, doc: int, start: int, end: int) -> bytes:
        return self.docs[doc][start:end]


def stdlib_paths(root: str | None = None) -> list[str]:
    """Sorted ``.py`` files under the standard library (installed packages and caches excluded)."""
    root = root if root is not None else sysconfig.get_paths()["stdlib"]
    out = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in ("site-packages", "dist-packages", "__pycache__")]
        out.extend(os.path.join(directory, f) for f in files if f.endswith(".py"))
    return sorted(out)


def default_corpus() -> FileCorpus:
    """The embedded corpus: the standard library's source, one document per file."""
    return FileCorpus.from_paths(stdlib_paths())
