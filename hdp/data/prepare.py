"""``hdp data prepare``: tokenize a source once into a token store (layout: ``hdp.data.store``).

Streaming: batches of documents go through ``encode_stream`` (worker processes) and their ids are
appended to ``tokens.bin`` as they come back, so memory holds a few batches plus 8 bytes per
document for the index, whatever the size of the input. The store is written into a temporary
directory beside ``--out`` and renamed into place at the end: an error or an interrupt leaves no
partial store, and an existing ``--out`` is never touched.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np

from hdp.data.encode import EncodedBatch, encode_stream
from hdp.data.sources import Source, detect
from hdp.data.store import FORMAT, LENGTHS, MANIFEST, OFFSETS, TOKENS, token_dtype
from hdp.data.tokenizer import Tokenizer, load_tokenizer


def prepare(input_path: str, out: str, *, tokenizer_path: str | None = None, text_field: str = "text",
            workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Write the store of ``input_path`` to ``out``; returns its manifest."""
    if os.path.exists(out):
        raise ValueError(f"--out {out!r} already exists: remove it or choose another directory (nothing was changed)")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ValueError(f"the parent directory of --out {out!r} does not exist: create it first")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    source = detect(input_path, text_field)
    if source.kind == "store":
        raise ValueError(f"{input_path!r} is a prepared store already: train on it with --data {input_path}")
    tokenizer = load_tokenizer(tokenizer_path)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.partial-", dir=parent)
    try:
        manifest = _write(source, tokenizer, tmp, workers, progress)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a store is an ordinary directory
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write(source: Source, tokenizer: Tokenizer, tmp: str, workers: int, progress: bool) -> dict[str, Any]:
    dtype = token_dtype(tokenizer.vocab_size)
    lengths = array.array("q")
    empty = 0
    with open(os.path.join(tmp, TOKENS), "wb") as f, _progress(source, progress) as bar:
        for enc in bar(encode_stream(tokenizer, source.batches(), workers)):
            f.write(enc.tokens.astype(dtype, copy=False).tobytes())
            lengths.extend(enc.lengths.tolist())
            empty += enc.empty
    if not lengths:
        raise ValueError(f"{source.path!r} has no non-empty documents ({empty} empty): nothing to prepare")
    lens = np.frombuffer(lengths, dtype=np.int64)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    np.save(os.path.join(tmp, LENGTHS), lens)
    np.save(os.path.join(tmp, OFFSETS), offsets)
    manifest = {
        "format": FORMAT,
        "dtype": dtype.str,
        "num_documents": len(lens),
        "num_tokens": int(offsets[-1]),
        "empty_documents_skipped": empty,
        "max_document_tokens": int(lens.max()),
        "tokenizer": {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size, "fingerprint": tokenizer.fingerprint},
        "source": {"path": os.path.abspath(source.path), "kind": source.kind, "text_field": source.text_field},
    }
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


@contextlib.contextmanager
def _progress(source: Source, enabled: bool):
    """A wrapper over the encoded stream that advances a rich progress bar (on stderr) as batches land."""
    if not enabled:
        yield lambda stream: stream
        return
    from rich.console import Console
    from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]prepare"), BarColumn(), TaskProgressColumn(),
                   TextColumn("{task.completed:,}/{task.total:,} " + source.unit),
                   TextColumn("· {task.fields[docs]:,} docs · {task.fields[tokens]:,} tokens"),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                   transient=True, disable=not console.is_terminal)  # gone when done: the command prints a summary line, an error stays one line
    task = bar.add_task("", total=source.total(), docs=0, tokens=0)

    def wrap(stream: Iterator[EncodedBatch]) -> Iterator[EncodedBatch]:
        docs = tokens = 0
        for enc in stream:
            docs, tokens = docs + len(enc.lengths), tokens + int(enc.lengths.sum())
            bar.update(task, advance=enc.advance, docs=docs, tokens=tokens)
            yield enc

    with bar:
        yield wrap
