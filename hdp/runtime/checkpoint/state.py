"""Save and restore a run with torch.distributed.checkpoint (DCP), sharded, reshardable.

Every flat buffer of ``ShardedAdamW`` (parameters in the compute dtype, master weights, AdamW's
two moments) is saved as one 1-D DTensor of the model's ``numel`` elements, ``Shard(0)`` over a
mesh of all ranks: rank r writes ``[r*S, min((r+1)*S, numel))`` with ``S = ceil(numel / W)``, which
is exactly the slice ``--zero 1/2`` owns (its buffers are padded to ``S * W``), so nothing is
gathered on one rank. With ``--zero 0`` every rank holds everything and still writes only its
slice. Loading asks DCP for the slices the *new* world size owns (or, with ``--zero 0``, for the
whole tensor), and DCP's load-time resharding reads them from whichever files hold them: a
checkpoint of 3 ranks resumes on 4 or on 1. The parameter layout (names, offsets, shapes) does not
depend on the world size, only the padding at the end does.

With ``--tp``/``--pp`` each (stage, TP index) coordinate's buffers are tensors of their own
(``coords``): keys ``stage{s}.tp{t}.<state>``, Shard(0) over that coordinate's HDP pool (the "hdp"
dimension of an (hdp, pp, tp) CPU mesh), so a resume on another number of HDP ranks with the same T
and P reshards each coordinate alone; the manifest's ``layout`` and ``numel`` are maps by coordinate.

The step, Adam's step count and the RNG state ride in ``hdp.json`` (``checkpoint_files``), which
rank 0 writes into the temporary directory after DCP's files, before the rename.
"""

from __future__ import annotations

import base64
import os
import shutil
from concurrent.futures import Future
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from hdp.runtime.checkpoint import files
from hdp.runtime.checkpoint.coords import saved_for, shard_of
from hdp.runtime.checkpoint.compare import comparable_exact, exact_config
from hdp.runtime.config import TrainConfig
from hdp.runtime.optim.zero import ShardedAdamW
from hdp.runtime.parallel import groups as run_groups
from hdp.runtime.parallel.mesh import Mesh

STATES = ("param", "master", "exp_avg", "exp_avg_sq")


def layout_of(optimizer: ShardedAdamW) -> list[list[Any]]:
    return [[e.name, e.offset, e.numel, list(e.shape)] for e in optimizer.layout]


class Checkpointer:
    """One rank's view of ``--save-dir``: ``save`` after a step, ``restore`` before the first."""

    def __init__(self, config: TrainConfig, optimizer: ShardedAdamW, data_id: str, rank: int, world_size: int) -> None:
        self.config, self.optimizer, self.data_id = config, optimizer, data_id
        self.rank, self.world_size = rank, world_size
        # Barriers and DCP's object collectives on the run's gloo group (parallel.groups): waiting while
        # rank 0 writes the manifest must not count against NCCL's watchdog, and an async save's
        # background collectives never pair with training's (a group of their own).
        groups = run_groups.current()
        host = groups.host
        self.group = host if host is not None else dist.new_group(backend="gloo") if config.async_save else None
        mesh = groups.mesh if groups.mesh.world_size == world_size else Mesh(world_size)
        self.shard = shard_of(mesh, groups.coord, rank)  # keys and pool of this (stage, TP index)
        self.mesh = (init_device_mesh("cpu", (world_size,)) if mesh.trivial else  # the HDP pool's sub-mesh
                     init_device_mesh("cpu", (mesh.hdp, mesh.pp, mesh.tp), mesh_dim_names=("hdp", "pp", "tp"))["hdp"])
        self._pending: tuple[Future, int] | None = None
        self.source: str | None = None
        """The checkpoint this run resumed from (None: a fresh run)."""
        self.saved: list[str] = []
        """Checkpoints this run wrote, oldest first (the last may still be in flight with async_save)."""

    # -- the tensors DCP sees -----------------------------------------------------------------------
    def _flat(self) -> dict[str, torch.Tensor]:
        o = self.optimizer
        lo, hi = o.shard_range
        param = o.flat_param if o.zero == 0 else o.flat_param[lo:hi]
        return {self.shard.key(k): t for k, t in
                (("param", param), ("master", o.master), ("exp_avg", o.exp_avg), ("exp_avg_sq", o.exp_avg_sq))}

    def _chunk(self) -> tuple[int, int]:
        """This rank's slice of its coordinate's ``[0, numel)`` (``coords.Shard.chunk``: the zero-1 shard)."""
        return self.shard.chunk(self.optimizer.numel)

    def _sharded(self, tensors: dict[str, torch.Tensor], copy: bool) -> dict[str, Any]:
        """Each flat tensor's valid part as a Shard(0) DTensor of ``numel`` elements; ``copy``: a host copy
        of its own (DCP's stager cannot copy a view of the live flat buffers, and training overwrites them)."""
        lo, hi = self._chunk()
        zero = self.optimizer.zero
        out: dict[str, Any] = {}
        for name, t in tensors.items():
            local = t[lo:hi] if zero == 0 else t[: hi - lo]  # zero >= 1 buffers start at this rank's offset
            if copy:
                local = local.detach().to("cpu", copy=True)
            out[name] = DTensor.from_local(local, self.mesh, [Shard(0)], run_check=False,
                                           shape=torch.Size([self.optimizer.numel]), stride=(1,))
        return out

    # -- save ---------------------------------------------------------------------------------------
    def save(self, step: int) -> None:
        """Checkpoint the state after ``step`` steps into ``step-NNNNNN`` (async: returns once staged)."""
        self.wait()
        final = files.step_dir(self.config.save_dir, step)
        self.saved.append(final)
        tmp = final + ".tmp"
        if self.rank == 0:
            os.makedirs(self.config.save_dir, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a save cut short by an earlier crash
        dist.barrier(group=self.group)
        state = self._sharded(self._flat(), copy=self.config.async_save or self.optimizer.device.type != "cpu")
        try:
            if self.config.async_save:
                self._pending = (dcp.async_save(state, checkpoint_id=tmp, process_group=self.group), step)
            else:
                dcp.save(state, checkpoint_id=tmp, process_group=self.group)
                self._finish(step)
        except (OSError, CheckpointException) as e:
            raise _write_failed(tmp, e) from None

    def wait(self) -> None:
        """Complete the async save in flight, if any (before the next save and at the end of the run)."""
        if self._pending is not None:
            fut, step = self._pending
            self._pending = None
            try:
                fut.result()
                self._finish(step)
            except (OSError, CheckpointException) as e:
                raise _write_failed(files.step_dir(self.config.save_dir, step) + ".tmp", e) from None

    def _finish(self, step: int) -> None:
        dist.barrier(group=self.group)  # every rank's file is written
        recorded = self._digests(files.step_dir(self.config.save_dir, step) + ".tmp")
        if self.rank == 0:
            final = files.step_dir(self.config.save_dir, step)
            files.write_manifest(final + ".tmp", self._manifest(step), recorded)
            files.publish(final + ".tmp", final)
            files.prune(self.config.save_dir, self.config.keep)
        dist.barrier(group=self.group)

    def _read_manifest(self, path: str) -> dict[str, Any]:
        """``files.read_manifest`` with the hashing split over the ranks (each hashes 1/W of the files, not
        all of them); every rank raises the first error any rank found (one object all-gather, on the gloo group)."""
        if self.world_size == 1:
            return files.read_manifest(path)
        manifest, error = None, None
        try:
            manifest = files.read_manifest(path, share=(self.rank, self.world_size))
        except ValueError as e:
            error = str(e)
        errors: list[Any] = [None] * self.world_size
        dist.all_gather_object(errors, error, group=self.group)
        first = next((e for e in errors if e), None)
        if first is not None:
            raise ValueError(first)
        assert manifest is not None
        return manifest

    def _digests(self, tmp: str) -> dict[str, list[Any]] | None:
        """Each rank hashes only the files it wrote (``files.own_files``); rank 0 gets them all (None elsewhere)."""
        mine = files.digests(tmp, files.own_files(tmp, self.rank))
        self._layouts = {self.shard.name: (layout_of(self.optimizer), self.optimizer.numel)}
        if self.world_size == 1:
            return mine
        gathered: list[Any] = [None] * self.world_size if self.rank == 0 else []
        part = (mine, self._layouts)  # every coordinate's layout rides along for rank 0's manifest
        dist.gather_object(part, gathered if self.rank == 0 else None, dst=0, group=self.group)
        if self.rank != 0:
            return None
        self._layouts = {k: v for _, layouts in gathered for k, v in layouts.items()}
        return {name: d for digests, _ in gathered for name, d in digests.items()}

    def _manifest(self, step: int) -> dict[str, Any]:
        """Plain HDP: ``numel`` and ``layout`` of the one model; with --tp/--pp, maps by coordinate name."""
        by_coord = self.shard.name != ""
        layouts = dict(sorted(self._layouts.items()))
        numel = {k: n for k, (_, n) in layouts.items()} if by_coord else self.optimizer.numel
        layout = {k: lay for k, (lay, _) in layouts.items()} if by_coord else layout_of(self.optimizer)
        return {"format": files.FORMAT, "step": step, "adam_steps": self.optimizer.num_steps,
                "world_size": self.world_size, "zero": self.optimizer.zero, "numel": numel,
                "config": exact_config(self.config), "save_every": self.config.save_every,
                "overrides": list(self.config.overrides), "data": self.data_id, "layout": layout,
                "run_config": self.config.run_config,  # the flags as TOML: hdp train --config replays them
                "rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}

    # -- restore ------------------------------------------------------------------------------------
    def restore(self, path: str) -> int:
        """Load checkpoint ``path`` into the optimizer and model; returns the step to continue from."""
        manifest = self._read_manifest(path)
        files.check_compatible({**manifest, "layout": saved_for(manifest, "layout", self.shard)},
                               comparable_exact(self.config, manifest), layout_of(self.optimizer), self.data_id, path)
        o = self.optimizer
        for name, live in self._flat().items():  # one buffer at a time: the host stages one shard, not four
            self._load_into(name, live, path)
        if o.zero >= 1 and o._distributed():  # parameters outside this rank's shard come from their owners
            lo, hi = o.shard_range
            dist.all_gather_single(o.flat_param, o.flat_param[lo:hi], group=o.group)
        o.num_steps = int(manifest["adam_steps"])
        rng = base64.b64decode(manifest["rng"])
        torch.set_rng_state(torch.frombuffer(bytearray(rng), dtype=torch.uint8))
        return int(manifest["step"])

    def _load_into(self, name: str, live: torch.Tensor, path: str) -> None:
        """Read ``name`` into a host staging tensor, then ``copy_`` what DCP filled into the live buffer, on
        every device alike: given a GPU shard, the CPU mesh's ``DTensor.from_local`` made a host *copy*,
        ``dcp.load`` filled the copy and the GPU buffers kept their fresh values."""
        o = self.optimizer
        if o.zero == 0:  # every rank holds the whole buffer: ask for all of it
            target = live[: o.numel]
            state: dict[str, Any] = {name: torch.empty(target.shape, dtype=live.dtype, device="cpu")}
        else:
            lo, hi = self._chunk()
            target = live[: hi - lo]  # zero >= 1 buffers start at this rank's offset
            state = self._sharded({name: torch.empty(hi - lo, dtype=live.dtype, device="cpu")}, copy=False)
        try:
            dcp.load(state, checkpoint_id=path, process_group=self.group)
        except Exception as e:  # noqa: BLE001 - DCP wraps every reader error; the cause is the file
            raise ValueError(f"checkpoint {path!r} could not be read ({type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}): resume from "
                             "an earlier step-* directory") from None
        filled = state[name]
        target.copy_(filled.to_local() if isinstance(filled, DTensor) else filled)


def open_checkpoint(config: TrainConfig, doc_lengths, optimizer: ShardedAdamW, rank: int,
                    world_size: int) -> tuple[Checkpointer | None, int]:
    """The run's checkpointer (None without --save-dir or --resume) and the step to start at.

    Resuming trims rank 0's --metrics and --dump-batches to the steps before the checkpoint, so a run
    killed after its last checkpoint lists every step once after the restart.
    """
    source = files.resume_source(config.resume, config.save_dir, files.restarted_by_agent())
    if source is None and not config.save_dir:
        return None, 0
    ckpt = Checkpointer(config, optimizer, files.data_identity(doc_lengths), rank, world_size)
    start = ckpt.restore(source) if source else 0
    ckpt.source = source
    if start > config.steps:
        raise ValueError(f"checkpoint {source!r} is of step {start:,}, past --steps {config.steps:,}: "
                         "raise --steps to continue training")
    if rank == 0 and start:
        files.trim_jsonl(config.metrics, start)
        files.trim_jsonl(config.dump_batches, start)
    return ckpt, start


def after_step(ckpt: Checkpointer | None, config: TrainConfig, done: int) -> None:
    """Save after ``done`` steps when --save-every says so, and after the last step."""
    if ckpt is None or not config.save_dir:
        return
    if done == config.steps or (config.save_every and done % config.save_every == 0):
        ckpt.save(done)


def _write_failed(tmp: str, e: BaseException) -> ValueError:
    """One line for a save that could not be written, synchronous or async alike."""
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return ValueError(f"writing checkpoint {tmp!r} failed ({text}): check --save-dir's space and permissions; "
                      "the earlier checkpoints are kept")
