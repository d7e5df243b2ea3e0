"""``--resume`` checked once in the launcher, and ``--max-restarts``: run again from the newest checkpoint.

A rank that dies (killed, out of memory, a crashed peer) ends the attempt; with restarts left, all
local ranks start again, resuming from the newest *complete* checkpoint in ``--save-dir`` (from the
start when none was written yet). Bad input (exit 2) is never retried: it would fail the same way.
Under torchrun the elastic agent restarts the processes itself; the worker then finds
``TORCHELASTIC_RESTART_COUNT > 0`` and resumes the same way (``checkpoint_files.resume_source``).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Callable

from hdp.runtime.checkpoint import files
from hdp.runtime.config import TrainConfig

EXIT_USER_ERROR = 2


def check_resume(config: TrainConfig, doc_lengths) -> str | None:
    """Validate the checkpoint this run would resume from (one line, before any process starts)."""
    from hdp.runtime.checkpoint.state import exact_config

    source = files.resume_source(config.resume, config.save_dir, restarted=False)
    if source is not None:
        manifest = files.read_manifest(source)
        files.check_compatible(manifest, exact_config(config), None, files.data_identity(doc_lengths), source)
    return source


def run_with_restarts(config: TrainConfig, nproc: int, spawn: Callable[[TrainConfig, int], int]) -> int:
    """``spawn`` the ranks; after a failure other than bad input, up to ``max_restarts`` times more."""
    for attempt in range(config.max_restarts + 1):
        code = spawn(config, nproc)
        if code in (0, EXIT_USER_ERROR) or attempt == config.max_restarts:
            return code
        found = files.complete_checkpoints(config.save_dir) if config.save_dir else []
        source = found[-1][1] if found else None
        print(f"hdp train: restarting all {nproc} ranks from {source or 'step 0 (no checkpoint yet)'} "
              f"(restart {attempt + 1} of {config.max_restarts})", file=sys.stderr, flush=True)
        config = replace(config, resume=source)
    return code
