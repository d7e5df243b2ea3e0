"""Rank 0's TensorBoard scalars: every numeric metric of a step, tagged by its metrics key.

One scalar per key of the metrics record (``hdp train --metrics``) at ``global_step = step``, plus
``micro_batch_spread`` (most minus fewest micro-batches on a rank: how uneven the step's work
lists are). Strings (``strategy``) become the run's text. Values are stored as TensorBoard's usual
float32 scalars.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

DERIVED = {"micro_batch_spread": ("micro_batches_max", "micro_batches_min")}


def check_tensorboard_dir(path: str) -> None:
    """Fail before any process starts: the package is missing or the directory cannot be made."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'hdp[tensorboard]' (or tensorboard)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--tensorboard: cannot create {path!r}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"--tensorboard: directory {path!r} is not writable")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numeric values by tag (``step`` is the x axis, not a scalar)."""
    out = {k: float(v) for k, v in record.items()
           if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    for tag, (hi, lo) in DERIVED.items():
        if hi in record and lo in record:
            out[tag] = float(record[hi] - record[lo])
    return out


class TensorBoardLog:
    """A ``SummaryWriter`` on ``log_dir``; write(record) once per step, close() at the end.

    ``start_step`` > 0 (a resumed run): TensorBoard's readers drop the events of steps >= start_step
    written before (``purge_step``: the steps after the checkpoint that the crashed run had logged),
    so each step shows once, as the trimmed metrics file does."""

    def __init__(self, log_dir: str, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=log_dir, purge_step=start_step or None)
        self._texts_written = False

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=step)
        if not self._texts_written:
            for k, v in record.items():
                if isinstance(v, str):
                    self._writer.add_text(k, v, global_step=step)
            self._texts_written = True

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
