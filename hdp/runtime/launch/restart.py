"""``--resume`` checked once in the launcher, ``--max-restarts``: run again from the newest checkpoint, and
``StopRequest``: SIGTERM (a cluster's preemption) or Ctrl-C saves a checkpoint before the run exits.

A resumed save directory keeps being saved into (``resume_defaults``): ``--resume DIR`` without
``--save-dir`` saves into DIR (the parent of a ``step-*`` directory) at the saved run's ``--save-every``.

A rank that dies (killed, out of memory, a crashed peer) ends the attempt; with restarts left, all
local ranks start again, resuming from the newest *complete* checkpoint in ``--save-dir`` (from the
start when none was written yet). Bad input (exit 2) is never retried: it would fail the same way.
Under torchrun the elastic agent restarts the processes itself; the worker then finds
``TORCHELASTIC_RESTART_COUNT > 0`` and resumes the same way (``checkpoint_files.resume_source``).
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from typing import Callable

from hdp.runtime.checkpoint import files
from hdp.runtime.launch.faults import without_fault
from hdp.runtime.config import TrainConfig

EXIT_USER_ERROR = 2


def check_resume(config: TrainConfig, doc_lengths) -> str | None:
    """Validate the checkpoint this run would resume from (one line, before any process starts)."""
    from hdp.runtime.checkpoint.compare import comparable_exact

    source = files.resume_source(config.resume, config.save_dir, restarted=False)
    if source is not None:
        manifest = files.read_manifest(source)
        files.check_compatible(manifest, comparable_exact(config, manifest), None, files.data_identity(doc_lengths),
                               source)
    elif config.overrides:
        raise ValueError(f"--override {','.join(config.overrides)} changes a checkpoint's config: it needs --resume")
    return source


def resume_defaults(config: TrainConfig) -> TrainConfig:
    """``--resume`` of a save directory keeps checkpointing there unless told otherwise: without
    ``--save-dir`` the run saves into the resumed directory (a ``step-*`` directory's parent), and
    without ``--save-every`` at the saved run's interval (recorded in its ``hdp.json``)."""
    if not config.resume:
        return config
    source = files.resolve(config.resume)
    save_dir = config.save_dir
    if save_dir is None:
        parent = os.path.dirname(os.path.abspath(source))
        inside = os.path.abspath(source) != os.path.abspath(config.resume)  # --resume named the save directory
        own = any(os.path.abspath(p) == os.path.abspath(source) for _, p in files.complete_checkpoints(parent))
        save_dir = config.resume if inside else (parent if own else None)
    save_every = config.save_every
    if save_every is None and save_dir is not None:
        try:
            import json

            with open(os.path.join(source, files.MANIFEST)) as f:
                saved = json.load(f).get("save_every")
            save_every = saved if isinstance(saved, int) and saved >= 1 else None
        except (OSError, ValueError, AttributeError):
            save_every = None  # read_manifest reports a bad checkpoint in one line later
    if save_dir == config.save_dir and save_every == config.save_every:
        return config
    return replace(config, save_dir=save_dir, save_every=save_every)


class StopRequest:
    """SIGTERM or Ctrl-C while a run with ``--save-dir`` trains: the step in flight finishes, every rank
    agrees on the last step (``agreed``), the run saves it and exits 143 / 130 as before.

    A second signal stops at once (KeyboardInterrupt), as does the launcher after its grace. An
    ignored SIGINT (a spawned rank: its launcher turns Ctrl-C into SIGTERM) stays ignored."""

    def __init__(self) -> None:
        self.signum = 0

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handler)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def agreed(self, world_size: int) -> int:
        """The signal any rank got (0: none), the same on every rank: one tiny all-reduce per step, so the
        ranks that saw the signal a moment apart still stop after the same step. It runs on the host
        (gloo) group with a CPU tensor, so it never waits for the device's queue to drain."""
        if world_size == 1:
            return self.signum
        import torch
        import torch.distributed as dist

        from hdp.runtime.parallel import groups

        host = groups.current().host
        if host is None and dist.get_backend() != "gloo":
            device = torch.accelerator.current_accelerator()
        else:
            device = torch.device("cpu")
        flag = torch.tensor([self.signum], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=host)
        return int(flag.item())

    def save_and_stop(self, ckpt, config: TrainConfig, done: int, rank: int) -> int:
        """Checkpoint the ``done`` steps (unless just saved), say where (rank 0), return 143 / 130."""
        if not ckpt.saved or ckpt.saved[-1] != files.step_dir(config.save_dir, done):
            ckpt.save(done)
        ckpt.wait()
        if rank == 0:  # the cause is the launcher's line (a spawned rank sees Ctrl-C as its SIGTERM)
            print(f"hdp train: stopped after step {done} of {config.steps}: saved {ckpt.saved[-1]}; continue with "
                  f"--resume {config.save_dir}", file=sys.stderr, flush=True)
        return 128 + self.signum


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
        without_fault()
    return code
