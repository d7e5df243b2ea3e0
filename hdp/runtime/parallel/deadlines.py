"""hdp's own deadline for stream-ordered waits (NCCL), watched off the training thread.

On NCCL a ring step waits with a plain ``Work.wait()``: the current CUDA stream waits for the
transfer and the host runs on, so there is no host sync per ring step. Nothing on the training
thread can then notice a peer that never answers; NCCL's watchdog would, but only as a SIGABRT with
the communicator's view (sequence numbers). So every watched wait is handed to one daemon thread
with hdp's words for it ("step, ring, micro-batch, peer"); the thread polls ``Work.is_completed()``
(an event query: no sync, no device work) and, past the deadline, says that line on stderr and
ends the process with exit code 3 (a peer failure, as ``hdp.runtime.launch.worker`` reports one).

The NCCL watchdog's own timeout is longer (``groups.pg_timeout_s``), so hdp's line comes first.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable

EXIT_PEER_FAILURE = 3
"""The worker's exit code for a peer that failed or did not answer (``launch.worker.EXIT_PEER_FAILURE``)."""
POLL_S = 0.25

where = ""
"""What the training thread is doing, e.g. "step 12" (set by the worker; a prefix of the timeout message)."""


def _exit_with(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    os._exit(EXIT_PEER_FAILURE)


class Deadlines:
    """Pending works, each with a deadline and a message; ``on_timeout(message)`` for the first expired."""

    def __init__(self, on_timeout: Callable[[str], None] = _exit_with, poll_s: float = POLL_S) -> None:
        self.on_timeout, self.poll_s = on_timeout, poll_s
        self._pending: list[tuple[float, Any, str]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.fired: str | None = None

    def watch(self, works: list[Any], timeout_s: float, message: Callable[[], str]) -> None:
        """Watch ``works`` for ``timeout_s`` from now; ``message()`` is built only if they expire."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._pending.extend((deadline, w, message) for w in works)  # type: ignore[misc]
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hdp-deadlines", daemon=True)
                self._thread.start()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def check(self, now: float | None = None) -> str | None:
        """One poll: drop completed works; the message of the first expired one, if any."""
        now = time.monotonic() if now is None else now
        with self._lock:
            items, self._pending = self._pending, []
        keep, expired = [], None
        for deadline, work, message in items:
            if work.is_completed():
                continue
            if now >= deadline and expired is None:
                expired = message()  # type: ignore[operator]
            keep.append((deadline, work, message))
        with self._lock:
            self._pending = keep + self._pending
        return expired

    def _run(self) -> None:
        while self.fired is None:
            time.sleep(self.poll_s)
            expired = self.check()
            if expired is not None:
                self.fired = expired
                dump_flight_recorder()
                self.on_timeout(expired)


def dump_flight_recorder() -> str | None:
    """Write NCCL's flight recorder of this rank where TORCH_NCCL_DEBUG_INFO_TEMP_FILE says (NCCL only)."""
    try:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_backend() != "nccl":
            return None
        trace = torch._C._distributed_c10d._dump_nccl_trace()  # type: ignore[attr-defined]
        path = os.environ.get("TORCH_NCCL_DEBUG_INFO_TEMP_FILE", "/tmp/nccl_trace_rank_") + str(dist.get_rank())
        with open(path, "wb") as f:
            f.write(trace)
        return path
    except Exception:  # noqa: BLE001 - best effort: the line on stderr is what matters
        return None


_deadlines: Deadlines | None = None


def deadlines() -> Deadlines:
    """The process's watcher (one thread per process, started on the first watched wait)."""
    global _deadlines
    if _deadlines is None:
        _deadlines = Deadlines()
    return _deadlines
