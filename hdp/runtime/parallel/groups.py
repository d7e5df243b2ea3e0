"""The process groups of a run, made once at start-up, and their timeouts.

* ``world``: the default group (NCCL on accelerators, gloo on CPU): collectives and inner-ring K/V.
* ``second``: a second group over the same ranks and backend, for the outer ring's K/V and every
  dK/dV stream. NCCL runs a *batched* P2P on the communicator (and CUDA stream) of its group in
  issue order, so with one group a two-level ring's NVLink transfers would queue behind the
  inter-node one of the same round; on their own group the two overlap.
* ``host``: a gloo group for checkpoint barriers and DCP's object collectives: a barrier that waits
  while rank 0 writes a manifest must not sit on an NCCL communicator whose watchdog counts it.
* ``pool`` and ``tp``: with ``--tp``/``--pp`` (``parallel.mesh``), this process's HDP pool (the
  optimizer's reduce-scatter and all-gather) and its TP group (the layers' collectives). Plain HDP:
  the pool is the world and there is no TP group.

Timeouts (``pg_timeout_s``): on gloo the group's timeout *is* hdp's ``--timeout`` (a gloo wait
blocks the host and raises when it expires, which hdp names). On NCCL the watchdog aborts the job
when it expires, so it must never fire before hdp's own deadline, nor during step 0's compiles and
model construction: ``WARMUP_TIMEOUT_S`` until the first step completes, then ``after_warmup``.

Groups are installed once per process (``install``) and read where a ring is built (``current``):
ring transfers are constructed deep inside the model's attention, and creating a group is a
collective over all ranks, so they cannot be made where they are used. Without ``install`` (a test
that calls ``init_process_group`` itself) every stream uses the default group, as before.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch.distributed as dist

from hdp.runtime.parallel.mesh import Coord, Mesh

WARMUP_TIMEOUT_S = 1800.0
"""NCCL watchdog timeout until the first step completes: compiles, model build, step 0's first connections."""
AFTER_WARMUP_FLOOR_S = 600.0
"""NCCL watchdog timeout after warm-up, at least (PyTorch's NCCL default); 2 x --timeout when larger."""
NCCL_DEFAULTS = {"TORCH_NCCL_DUMP_ON_TIMEOUT": "1", "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000"}
"""Set when unset: a watchdog timeout dumps the flight recorder's last collectives/P2P per rank."""


@dataclass(frozen=True)
class Groups:
    """The run's groups; ``None`` stands for the default group (``dist``'s own convention)."""

    world: dist.ProcessGroup | None = None
    second: dist.ProcessGroup | None = None
    host: dist.ProcessGroup | None = None
    backend: str = "gloo"
    mesh: Mesh = field(default_factory=Mesh)
    coord: Coord = field(default_factory=lambda: Coord(0, 0, 0))
    """This process's place in ``mesh``."""
    pool: dist.ProcessGroup | None = None
    """This process's HDP pool (``None``: the world, plain HDP)."""
    tp: dist.ProcessGroup | None = None
    """This process's TP group (``None`` with ``--tp 1``)."""

    def global_rank(self, hdp_rank: int) -> int:
        """The process of this coordinate (stage, TP index) that is the plan's HDP rank ``hdp_rank``."""
        if self.mesh.trivial:
            return hdp_rank
        return self.mesh.rank(hdp_rank, self.coord.stage, self.coord.tp)


_installed: Groups | None = None


def install(groups: Groups | None) -> None:
    """Make ``groups`` the process's groups (``None``: forget them, e.g. after the group is torn down)."""
    global _installed
    _installed = groups


def current() -> Groups:
    """The installed groups, else every stream on the default group (backend read from it)."""
    if _installed is not None:
        return _installed
    backend = str(dist.get_backend()) if dist.is_initialized() else "gloo"
    return Groups(backend=backend)


def pg_timeout_s(backend: str, timeout_s: float, warm: bool) -> float:
    """The world group's timeout: ``--timeout`` on gloo; on NCCL long in warm-up, shorter after (see module doc)."""
    if backend != "nccl":
        return timeout_s
    if not warm:
        return max(WARMUP_TIMEOUT_S, timeout_s)
    return max(AFTER_WARMUP_FLOOR_S, 2 * timeout_s)


def nccl_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set the flight-recorder defaults where the user has not; returns what was set."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    added = {k: v for k, v in NCCL_DEFAULTS.items() if k not in environ}
    environ.update(added)
    return added


def create_groups(backend: str, timeout_s: float, mesh: Mesh | None = None) -> Groups:
    """The extra groups, once, right after ``init_process_group`` (every rank must call it: collective).

    With a mesh (``--tp``/``--pp``), every process creates every HDP pool and every TP group in the
    same order (``new_group`` is collective over the world) and keeps its own."""
    timeout = datetime.timedelta(seconds=pg_timeout_s(backend, timeout_s, warm=False))
    world = dist.get_world_size()
    mesh = mesh if mesh is not None else Mesh(world)
    if mesh.world_size != world:
        raise ValueError(f"the mesh has {mesh.world_size} processes, the world {world}")
    coord = mesh.coord(dist.get_rank())
    if world == 1:
        return Groups(backend=backend, mesh=mesh, coord=coord)
    second = dist.new_group(backend=backend, timeout=timeout, group_desc="hdp_second")
    host = dist.new_group(backend="gloo", timeout=timeout, group_desc="hdp_host")
    pool = tp = None
    if not mesh.trivial:
        for i, ranks in enumerate(mesh.pools()):
            group = dist.new_group(ranks, backend=backend, timeout=timeout, group_desc=f"hdp_pool_{i}")
            if ranks == mesh.pool(coord.stage, coord.tp):
                pool = group
        if mesh.tp > 1:
            for i, ranks in enumerate(mesh.tp_groups()):
                group = dist.new_group(ranks, backend=backend, timeout=timeout, group_desc=f"hdp_tp_{i}")
                if ranks == mesh.tp_ranks(coord.hdp, coord.stage):
                    tp = group
    return Groups(world=None, second=second, host=host, backend=backend, mesh=mesh, coord=coord, pool=pool, tp=tp)


def end_warmup(groups: Groups, timeout_s: float) -> float | None:
    """Shorten the NCCL groups' timeouts after the first step; returns the new timeout (None: unchanged)."""
    if groups.backend != "nccl":
        return None
    seconds = pg_timeout_s(groups.backend, timeout_s, warm=True)
    set_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)  # torch >= 2.4; private, so guarded
    if set_timeout is None:
        return None
    extra = [g for g in (groups.pool, groups.tp) if g is not None]
    for group in (groups.world, groups.second, *extra):
        set_timeout(datetime.timedelta(seconds=seconds), group)
    return seconds


def abort_all() -> bool:
    """Tear every group down *without* waiting for pending work (a destroy can hang on it). True if aborted."""
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if abort is None or not dist.is_initialized():
        return False
    try:
        abort()
    except Exception:  # noqa: BLE001 - a backend without abort (gloo): exiting the process frees it
        return False
    finally:
        install(None)
    return True
