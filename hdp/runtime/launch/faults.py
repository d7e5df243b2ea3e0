"""A debug hook that injects one fault into a run, so the tests (and anyone checking the README's
fault table) can see what hdp does when a rank dies, hangs or produces a NaN.

``HDP_DEBUG_FAULT=KIND:RANK:STEP`` makes global rank RANK, at step STEP (0-based):

* ``kill``: SIGKILL itself in the step's first forward (mid-step: after the plan check, before its
  first ring send), as the kernel's OOM killer would;
* ``hang``: stop in the step's first forward and never post its ring sends (a silent peer);
* ``nan``: poison its gradient with NaN in the step's backward.

``HDP_TEST_KILL=RANK:STEP:MARKER`` (``maybe_kill``, for restart tests and ``benchmarks/soak.py``):
rank RANK SIGKILLs itself as step STEP begins, once — it first creates the file MARKER (holding the
wall-clock time of the kill) and does nothing if MARKER exists, so the restarted run passes the same
step; unset, it costs one environment lookup per step.

Both fire once per run: a run restarted after the fault (``--max-restarts``, or torchrun's agent) runs
without it, so ``HDP_DEBUG_FAULT=kill:1:7 --max-restarts 1`` shows the restart succeeding. The
launcher drops ``HDP_DEBUG_FAULT`` from the environment of its restarts (``without_fault``); a rank
of a restarted torchrun attempt (``TORCHELASTIC_RESTART_COUNT`` > 0) ignores it.

``HDP_DEBUG_FAULT`` is read once at start-up. Unset (the normal case), nothing is installed: the step's
hot path has no check at all. Each fault prints one ``hdp debug:`` line with a wall-clock time, so
a test can measure how long the others take to notice.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

ENV = "HDP_DEBUG_FAULT"
KINDS = ("kill", "hang", "nan")


@dataclass
class Fault:
    kind: str
    rank: int
    step: int
    current_step: int = -1
    """Set by the training loop at the start of every step (only when a fault is installed)."""

    @classmethod
    def from_env(cls) -> "Fault | None":
        spec = os.environ.get(ENV)
        if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
            return None  # unset, or this is a restart after the fault fired
        parts = spec.split(":")
        if len(parts) != 3 or parts[0] not in KINDS or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(f"{ENV}={spec!r}: expected KIND:RANK:STEP with KIND one of {', '.join(KINDS)}")
        return cls(parts[0], int(parts[1]), int(parts[2]))

    def _announce(self, what: str) -> None:
        print(f"hdp debug: rank {self.rank} {what} at step {self.step} (t={time.time():.3f})", file=sys.stderr, flush=True)

    def install(self, model: nn.Module, rank: int) -> None:
        """Hook the fault into ``model`` if it is this rank's."""
        if rank != self.rank:
            return
        if self.kind == "nan":
            first = next(p for p in model.parameters() if p.requires_grad)
            first.register_hook(self._poison)
        else:
            model.register_forward_pre_hook(self._before_forward)

    def _poison(self, grad: torch.Tensor) -> torch.Tensor:
        if self.current_step != self.step:
            return grad
        self._announce("poisons its gradient with NaN")
        return torch.full_like(grad, float("nan"))

    def _before_forward(self, module: nn.Module, args: object) -> None:
        if self.current_step != self.step:
            return
        if self.kind == "kill":
            self._announce("kills itself (SIGKILL)")
            os.kill(os.getpid(), signal.SIGKILL)
        self._announce("stops answering (never posts its ring sends)")
        while True:  # until the launcher stops it
            time.sleep(3600)


KILL_ONCE_ENV = "HDP_TEST_KILL"


def maybe_kill(rank: int, step: int) -> None:
    spec = os.environ.get(KILL_ONCE_ENV)
    if not spec:
        return
    r, s, marker = spec.split(":", 2)
    if int(r) != rank or int(s) != step:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"{time.time()}\n".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def without_fault() -> None:
    """After the first attempt of a run: its restarts run without the injected fault (once per run)."""
    if os.environ.pop(ENV, None):
        print(f"hdp debug: the restarts run without {ENV} (an injected fault fires once per run)",
              file=sys.stderr, flush=True)
