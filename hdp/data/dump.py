"""``--dump-batches FILE``: every step's global batch as token ids, one JSON line per step.

``{"step": s, "documents": [[ids of sequence 0], [ids of sequence 1], ...]}`` in batch order, the
sequences exactly as the planner saw them (pieces of at most ``--max-seq-len`` tokens, the batch's
first and last cut to fit). With these ids anyone can recompute the step's loss without hdp: each
sequence attended on its own, every token but its last labelled with the next one, the loss the
mean over all labelled tokens of the step.
"""

from __future__ import annotations

import json
import os

from hdp.data.batches import GlobalBatch


def check_writable(path: str) -> None:
    """Fail before training, without creating the file, if it cannot be written."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write --dump-batches {path!r}: give a file in an existing, writable directory")


def batch_record(step: int, batch: GlobalBatch) -> dict:
    return {"step": step, "documents": [list(batch.read(i, 0, n)) for i, n in enumerate(batch.lengths)]}


class BatchDump:
    """Appends one line per step, flushed, so a run that stops keeps the steps it finished."""

    def __init__(self, path: str, append: bool = False) -> None:
        check_writable(path)
        self._file = open(path, "a" if append else "w")  # noqa: SIM115 - closed by close()

    def write(self, step: int, batch: GlobalBatch) -> None:
        self._file.write(json.dumps(batch_record(step, batch), separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
