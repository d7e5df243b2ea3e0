"""Faults injected on purpose, for tests and ``benchmarks/soak.py`` only.

``HDP_TEST_KILL=RANK:STEP:MARKER``: rank RANK sends itself SIGKILL as step STEP begins, once — it
first creates the file MARKER (holding the wall-clock time of the kill), and does nothing if MARKER
exists, so the restarted run passes the same step. Unset (always, outside tests), this costs one
dictionary lookup per step.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "HDP_TEST_KILL"


def maybe_kill(rank: int, step: int) -> None:
    spec = os.environ.get(ENV)
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
