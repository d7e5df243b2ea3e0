"""Plan ahead: steps s+1 ... s+d are planned in background processes while step s trains.

At 16K ranks planning takes seconds, as long as a step: planned inline at the start of each step
it would stall every step. Here ``d`` planner processes (``hdp train --plan-ahead d``) take the
steps in turn (process j plans steps j, j+d, j+2d, ...), each at most one plan ahead of the step
that trains, so while step s trains steps s+1 ... s+d are being planned and a plan that takes less
than d steps' time never makes a step wait. Every rank still plans for itself from the config
alone (each its own planners), so the plans agree and ``train_step``'s fingerprint check stays.

The planners are forked from the rank (the run's data stream and cost model are already in
memory; they run the pure planner only, never torch) and die with it: ``PR_SET_PDEATHSIG`` kills
them when the rank dies, even by SIGKILL, and ``close`` ends them when it finishes. A planner's
error stops the run as one line (a ``ValueError`` naming the step).

``HDP_TEST_PLAN_DELAY_S`` (tests only, like ``HDP_TEST_KILL``): each plan takes that many seconds
longer; ``HDP_TEST_PLAN_FAIL_AT=STEP``: planning that step fails.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue
import signal
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from hdp.plan.types import Plan

DELAY_ENV = "HDP_TEST_PLAN_DELAY_S"
FAIL_ENV = "HDP_TEST_PLAN_FAIL_AT"
POLL_S = 0.2
"""How often a waiting rank checks that its planner is still alive."""
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the process that forked it dies (Linux; elsewhere ``close`` only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the rank died before the signal was armed
        os._exit(1)


def _planner(plan_step: Callable[[int], "Plan"], steps: range, out: Any, parent: int) -> None:
    """A planner process: plan ``steps`` in order, each put on ``out`` (at most one waiting)."""
    _die_with_parent(parent)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the rank's own handlers (save on SIGTERM) are not ours
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the rank's to handle; it closes us
    delay = float(os.environ.get(DELAY_ENV) or 0.0)
    fail_at = os.environ.get(FAIL_ENV)
    for step in steps:
        start = time.perf_counter()
        try:
            if delay:
                time.sleep(delay)
            if fail_at is not None and int(fail_at) == step:
                raise ValueError(f"{FAIL_ENV}={fail_at}: planning fails as asked")
            plan = plan_step(step)
        except Exception as e:  # noqa: BLE001 - any planner error ends the run as one line
            out.put(("error", step, str(e) or type(e).__name__, 0.0))
            return
        out.put(("plan", step, plan, time.perf_counter() - start))


class PlanAhead:
    """The plans of steps ``start ... end - 1``, made ``depth`` steps ahead (module docstring)."""

    def __init__(self, plan_step: Callable[[int], "Plan"], start: int, end: int, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"--plan-ahead must be >= 1 for planner processes, got {depth}")
        ctx = mp.get_context("fork")
        self.start, self.depth = start, depth
        self.queues = [ctx.Queue(maxsize=1) for _ in range(depth)]
        self.procs = [ctx.Process(target=_planner, args=(plan_step, range(start + j, end, depth), q, os.getpid()),
                                  name=f"hdp-plan-ahead-{j}", daemon=True)
                      for j, q in enumerate(self.queues)]
        for p in self.procs:
            p.start()

    def get(self, step: int) -> tuple["Plan", float, float]:
        """(plan, seconds this step waited for it, seconds its planning took)."""
        j = (step - self.start) % self.depth  # planner j plans start + j, start + j + depth, ...
        q, proc = self.queues[j], self.procs[j]
        start = time.perf_counter()
        waited = 0.0  # the plan was ready: handing it over (unpickling) is not waiting for it
        try:
            kind, got, payload, planning_s = q.get_nowait()
        except queue.Empty:
            while True:
                try:
                    kind, got, payload, planning_s = q.get(timeout=POLL_S)
                    break
                except queue.Empty:
                    if not proc.is_alive() and q.empty():
                        raise ValueError(f"step {step}: the plan-ahead process died (exit code {proc.exitcode}) "
                                         "before it made the plan") from None
            waited = time.perf_counter() - start
        if kind == "error":
            raise ValueError(f"step {got}: planning failed: {payload}")
        assert got == step, (got, step)
        return payload, waited, planning_s

    def close(self) -> None:
        """End the planners (they may be waiting to hand over plans nobody will take)."""
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for q in self.queues:
            q.close()
            q.cancel_join_thread()


class PlanInline:
    """``--plan-ahead 0``: each step's plan made when the step begins (it waits all of it)."""

    def __init__(self, plan_step: Callable[[int], "Plan"]) -> None:
        self.plan_step = plan_step

    def get(self, step: int) -> tuple["Plan", float, float]:
        start = time.perf_counter()
        plan = self.plan_step(step)
        took = time.perf_counter() - start
        return plan, took, took

    def close(self) -> None:
        pass


def plans_for(plan_step: Callable[[int], "Plan"], start: int, end: int, depth: int) -> PlanAhead | PlanInline:
    """Planner processes ``depth`` steps ahead, or inline planning for ``depth`` 0 or a run of one step."""
    if depth == 0 or end - start <= 1:
        return PlanInline(plan_step)
    return PlanAhead(plan_step, start, end, min(depth, end - start))
