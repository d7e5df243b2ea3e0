"""Where documents come from: a JSONL or Parquet file, a ``datasets`` ``save_to_disk`` directory, a
directory of text files, one text file, or a prepared token store (``hdp.data.store``).

Every source streams its documents in a fixed order, in batches, so reading 1 GB of text holds one
batch in memory at a time: JSONL line by line, Parquet by row group batches (pyarrow), datasets by
``Dataset.iter`` over its memory-mapped Arrow files, text directories file by file in sorted order.
Each batch comes with how far it moved the progress bar (bytes, rows or files: ``Source.unit``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterator, Literal

from hdp.data.store import is_store

TEXT_SUFFIXES = (".py", ".txt", ".md")
BATCH_DOCS = 1000
BATCH_CHARS = 1 << 18
"""A batch ends at 1,000 documents or 256 KiB of text, whichever comes first: large enough to amortise
worker round trips, small enough that a few batches in flight stay a few MB (one longer document is
its own batch: a document is tokenized whole)."""
READ_ROWS = 64
"""Rows per Parquet / datasets read (documents can be long: rebatched by size afterwards)."""

Kind = Literal["jsonl", "parquet", "datasets", "text-dir", "text-file", "store"]
Batch = list["str | bytes | None"]
"""Documents of one batch; ``None`` is a missing text (counted as an empty document)."""


@dataclass(frozen=True)
class Source:
    path: str
    kind: Kind
    text_field: str = "text"

    @property
    def unit(self) -> str:
        return {"jsonl": "bytes", "parquet": "rows", "datasets": "rows"}.get(self.kind, "files")

    def total(self) -> int:
        """Progress-bar total in ``unit`` (cheap: sizes and metadata only)."""
        if self.kind == "jsonl":
            return os.path.getsize(self.path)
        if self.kind == "parquet":
            return _parquet_file(self.path).metadata.num_rows
        if self.kind == "datasets":
            return len(_load_dataset(self.path, self.text_field))
        return len(text_files(self.path)) if self.kind == "text-dir" else 1

    def batches(self) -> Iterator[tuple[Batch, int]]:
        """(documents, progress advance) in the source's fixed order."""
        readers = {"jsonl": _jsonl, "parquet": _parquet, "datasets": _datasets, "text-dir": _text_dir,
                   "text-file": _text_dir}
        if self.kind not in readers:
            raise ValueError(f"{self.path!r} is a prepared store already: train on it with --data {self.path}")
        return _rebatch(readers[self.kind](self))


def detect(path: str, text_field: str = "text") -> Source:
    """What kind of input ``path`` is, from its name and the files it holds (nothing is parsed yet)."""
    if not os.path.exists(path):
        raise ValueError(f"--data {path!r} does not exist: give a JSONL or Parquet file, a datasets directory, "
                         "a directory of text files or a prepared store")
    if os.path.isdir(path):
        if is_store(path):
            kind: Kind = "store"
        elif any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            kind = "datasets"
        else:
            kind = "text-dir"
    elif path.endswith((".jsonl", ".json", ".ndjson")):
        kind = "jsonl"
    elif path.endswith(".parquet"):
        kind = "parquet"
    else:
        kind = "text-file"
    return Source(path, kind, text_field)


def text_files(path: str) -> list[str]:
    """The documents of a text source: one file, or a directory's ``.py``/``.txt``/``.md`` files, sorted."""
    if os.path.isfile(path):
        return [path]
    found = []
    for directory, subdirs, files in os.walk(path):
        subdirs.sort()
        found.extend(os.path.join(directory, f) for f in files if f.endswith(TEXT_SUFFIXES))
    return sorted(found)


def _rebatch(parts: Iterator[tuple[Batch, int]]) -> Iterator[tuple[Batch, int]]:
    """Regroup the readers' pieces into batches of at most BATCH_DOCS documents / BATCH_CHARS of text."""
    batch: Batch = []
    chars = advance = 0
    for docs, adv in parts:
        for d in docs:
            batch.append(d)
            chars += len(d) if d else 0
            if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
                yield batch, advance
                batch, chars, advance = [], 0, 0
        advance += adv
    if batch or advance:
        yield batch, advance


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:  # bytes: the byte tokenizer keeps them exactly, others decode UTF-8
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror or e}") from None


def _text_dir(src: Source) -> Iterator[tuple[Batch, int]]:
    for p in text_files(src.path):
        yield [_read_bytes(p)], 1


def _missing_field(where: str, field: str, fields: list[str]) -> ValueError:
    have = ", ".join(repr(f) for f in fields) if fields else "none"
    return ValueError(f"{where} has no field {field!r}; its fields are {have}: choose one with --text-field")


def _text(value: object, where: str, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{where}: field {field!r} holds {type(value).__name__}, not text: choose a text field with --text-field")


def _jsonl(src: Source) -> Iterator[tuple[Batch, int]]:
    try:
        f = open(src.path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ValueError(f"cannot read {src.path!r}: {e.strerror or e}") from None
    with f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                yield [], len(line)
                continue
            where = f"{src.path}:{no}"
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{where} is not valid JSON ({e.args[0][:80]}): give one JSON object per line") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where} is a JSON {type(record).__name__}, not an object with a {src.text_field!r} field")
            if src.text_field not in record:
                raise _missing_field(where, src.text_field, list(record))
            yield [_text(record[src.text_field], where, src.text_field)], len(line)


def _parquet_file(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise ValueError(f"cannot read Parquet file {path!r} ({str(e).splitlines()[0][:160]}): "
                         "is it a complete Parquet file?") from None


def _parquet(src: Source) -> Iterator[tuple[Batch, int]]:
    pf = _parquet_file(src.path)
    names = pf.schema_arrow.names
    if src.text_field not in names:
        raise _missing_field(src.path, src.text_field, names)
    try:
        for record_batch in pf.iter_batches(batch_size=READ_ROWS, columns=[src.text_field]):
            texts = record_batch.column(0).to_pylist()
            yield [_text(t, src.path, src.text_field) for t in texts], len(texts)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt page shows up only while reading
        raise ValueError(f"cannot read Parquet file {src.path!r} ({str(e).splitlines()[0][:160]})") from None


def _load_dataset(path: str, field: str):
    try:
        import datasets
    except ModuleNotFoundError:
        raise ValueError(f"{path!r} is a datasets directory; reading it needs 'datasets': pip install -e '.[hf]'") from None
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:  # noqa: BLE001 - datasets raises FileNotFoundError, ValueError, Arrow errors, ...
        raise ValueError(f"cannot load the datasets directory {path!r} ({str(e).splitlines()[0][:160]})") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "train" in ds:
            ds = ds["train"]
        elif len(splits) == 1:
            ds = ds[splits[0]]
        else:
            raise ValueError(f"{path!r} holds the splits {', '.join(splits)} and no 'train': give one split's directory")
    if field not in ds.column_names:
        raise _missing_field(path, field, list(ds.column_names))
    return ds


def _datasets(src: Source) -> Iterator[tuple[Batch, int]]:
    ds = _load_dataset(src.path, src.text_field).select_columns([src.text_field])
    for rows in ds.iter(batch_size=READ_ROWS):
        texts = rows[src.text_field]
        yield [_text(t, src.path, src.text_field) for t in texts], len(texts)
