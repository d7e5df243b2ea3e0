"""What one rank does for a whole run: process group, model, then per step plan -> train_step -> report.

Every rank computes the same data and plan for a step from the config alone (no broadcast); the
fingerprint check in ``train_step`` catches any rank that did not. Errors become one line on
stderr naming the rank and what is wrong, and a non-zero return code.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from hdp.data.dump import BatchDump
from hdp.plan.cost.memory import rank_num_params, state_bytes as planned_state_bytes
from hdp.runtime.checkpoint.state import after_step, open_checkpoint
from hdp.runtime.checkpoint.files import agent_attempt
from hdp.runtime.config import TrainConfig
from hdp.runtime.optim.lr_schedule import lr_at
from hdp.runtime.observe.memory_stats import local_memory, memory_fields, memory_record
from hdp.runtime.model.source import build_train_model
from hdp.runtime.model.tensor_parallel import TensorParallel
from hdp.runtime.offload.activations import ActivationOffloader
from hdp.runtime.launch.faults import Fault, maybe_kill
from hdp.runtime.launch.accelerator import allocator_defaults, step_elapsed
from hdp.runtime.parallel import deadlines
from hdp.runtime.parallel import groups as run_groups
from hdp.runtime.parallel.devices import check_devices_agree, pick_device
from hdp.runtime.parallel.mesh import Mesh
from hdp.runtime.parallel.peers import PeerError, collective, peer_cause

from hdp.runtime.train.step import StepResult, build_optimizer, train_step

from hdp.runtime.observe.report import Reporter, metrics_record, mfu_peak
from hdp.runtime.train.plan_ahead import plans_for
from hdp.runtime.launch.restart import StopRequest
from hdp.runtime.train.run import Run
EXIT_USER_ERROR = 2
EXIT_PEER_FAILURE = 3
EXIT_NON_FINITE = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
"""SIGTERM (preemption) after the run saved its checkpoint (128 + SIGTERM, as a process killed by it)."""
REPORTED_CODES = (EXIT_USER_ERROR, EXIT_PEER_FAILURE, EXIT_NON_FINITE, EXIT_INTERRUPTED, EXIT_TERMINATED)
"""Exit codes of a rank that has printed its own one-line reason (the launcher adds nothing)."""



class NonFiniteStep(Exception):
    """A step's loss or gradient was NaN/Inf under ``--on-nan stop`` (every rank raises it together)."""


def _gather_devices(device: torch.device, world_size: int) -> list[str]:
    """Every rank's device, for rank 0's summary (one small collective at start-up)."""
    if world_size == 1:
        return [str(device)]
    devices: list[Any] = [None] * world_size
    with collective("gathering the ranks' devices"):
        dist.all_gather_object(devices, str(device))
    return [str(d) for d in devices]


def init_group(rank: int, world_size: int, device: torch.device, timeout_s: float, *,
               check_agreement: bool = False, mesh: Mesh | None = None) -> run_groups.Groups:
    """Create the process groups once (env:// rendezvous: MASTER_ADDR/MASTER_PORT); returns them, installed.

    The world group's timeout is ``--timeout`` on gloo and long on NCCL until warm-up ends
    (``groups.pg_timeout_s``); NCCL also gets the flight recorder's settings where unset.
    ``check_agreement`` (torchrun): every rank must have picked the same device type, checked on
    the rendezvous store before the first collective (``devices.check_devices_agree``).

    A torchrun attempt after a restart (TORCHELASTIC_RESTART_COUNT > 0) meets the agent's store
    again, where the dead attempt's keys still are: its keys go under a prefix of their own, else
    the rank that got there first reads the dead attempt's gloo addresses and times out."""
    backend = dist.get_default_backend_for_device(device)
    if backend == "nccl":
        run_groups.nccl_environment()
    timeout = datetime.timedelta(seconds=run_groups.pg_timeout_s(backend, timeout_s, warm=False))
    device_id = device if device.type != "cpu" else None
    attempt = agent_attempt()
    if attempt == 0 and not check_agreement:
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout, device_id=device_id)
    else:
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        if check_agreement:
            check_devices_agree(dist.PrefixStore(f"hdp/devices-{attempt}", store), world_size, device.type,
                                timeout_s)
        if attempt > 0:
            store = dist.PrefixStore(f"hdp/attempt-{attempt}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout,
                                device_id=device_id)
    groups = run_groups.create_groups(backend, timeout_s, mesh)
    run_groups.install(groups)
    return groups


def say(line: str) -> None:
    """One line on stderr in one write: ranks that fail at once must not interleave their lines."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_rank(config: TrainConfig, rank: int, world_size: int, local_rank: int, *, use_accelerator: bool,
             torchrun: bool = False) -> int:
    """Train on this rank; returns the process exit code (0 on success).

    ``torchrun``: launched by torchrun, where an accelerator that is expected but missing is an error,
    never a silent CPU/gloo fallback (``parallel.devices``)."""
    ok = False
    try:
        code = _train(config, rank, world_size, local_rank, use_accelerator, torchrun)
        ok = code == 0
        return code
    except ValueError as e:
        say(f"hdp train: error: rank {rank}: {e}")
        return EXIT_USER_ERROR
    except (dist.DistError, PeerError) as e:  # a peer died, hung or left: not a bug of ours
        cause = str(e) if isinstance(e, PeerError) else peer_cause(e)
        say(f"hdp train: error: rank {rank}: a peer failed or did not answer within --timeout "
            f"{config.timeout_s:g} s: {cause}")
        return EXIT_PEER_FAILURE
    except NonFiniteStep as e:  # every rank knows; one says it
        if rank == 0:
            say(f"hdp train: error: {e}")
        return EXIT_NON_FINITE
    except KeyboardInterrupt:  # under torchrun the agent forwards Ctrl-C: one line, no traceback per rank
        if rank == 0:
            say("hdp train: interrupted")
        return EXIT_INTERRUPTED
    finally:
        close_groups(ok)


def close_groups(ok: bool) -> None:
    """Destroy the groups after a clean run; after an error *abort* them: a destroy waits for pending
    work, and with a dead peer that work never completes (the rank would hang instead of exiting)."""
    if not dist.is_initialized():
        return
    if not ok and run_groups.abort_all():
        return
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a broken group cannot always be torn down; exiting is enough
        pass
    run_groups.install(None)


def _train(config: TrainConfig, rank: int, world_size: int, local_rank: int, use_accelerator: bool,
           torchrun: bool = False) -> int:
    allocator_defaults()  # expandable segments, unless the user chose: before anything starts CUDA
    mesh = Mesh.for_world(world_size, config.tp, config.pp)
    hdp = mesh.hdp  # the plan's ranks; this process is HDP rank mesh.coord(rank).hdp
    run = Run.from_config(config, hdp)
    config = run.config
    offload_layers = run.offload_layers()
    device = pick_device(local_rank, use_accelerator, strict=torchrun)
    run.check_feasible(hdp, device)  # memory: this rank's own device
    groups = init_group(rank, world_size, device, config.timeout_s, check_agreement=torchrun and world_size > 1,
                        mesh=mesh)
    tp = TensorParallel(mesh.tp, groups.coord.tp, groups.tp) if mesh.tp > 1 else None
    model = build_train_model(config, device, tp, stage=(groups.coord.stage, mesh.pp))  # --pp: this stage's layers
    fault = Fault.from_env()  # HDP_DEBUG_FAULT (hdp.runtime.launch.faults); None in normal runs
    if fault is not None:
        fault.install(model, rank)
    zero = config.zero_for(hdp)  # sharded over this process's HDP pool
    optimizer = build_optimizer(model, config.lr, config.weight_decay, zero=zero, groups=groups)
    ckpt, start_step = open_checkpoint(config, run.stream.corpus.doc_lengths, optimizer, rank, world_size)
    # With --tp/--pp the formula's, largest over the stages (as the recorded state_bytes is over ranks).
    numels = ([rank_num_params(model.cfg, mesh.tp, mesh.pp, s) for s in range(mesh.pp)]
              if tp is not None or mesh.pp > 1 else [optimizer.numel])
    planned = max(planned_state_bytes(n, dtype=config.dtype, zero=zero, world_size=hdp).total for n in numels)
    fixed = {"tp": mesh.tp, "pp": mesh.pp, "zero": zero, **optimizer.precision.describe(), "recompute": config.recompute,
             "planned_state_bytes": planned}
    offload = None
    if config.offload or offload_layers:
        offload = ActivationOffloader(device, model.cfg.num_layers, model.parameters())
    stop = StopRequest()
    if ckpt is not None and config.save_dir:  # SIGTERM / Ctrl-C: finish the step, save it, then exit
        stop.install()
    reporter = Reporter(config, enabled=rank == 0, data=run.data, start_step=start_step)
    reporter.devices = _gather_devices(device, world_size)
    reporter.ranks_per_node = run.ranks_per_node(world_size)
    reporter.peak = mfu_peak(device, run.cost, config.profile)
    peak = reporter.peak[0]
    reporter.begin(ckpt.source if ckpt is not None else None, start_step, run.cost.device.name)
    dump = BatchDump(config.dump_batches, append=start_step > 0) if rank == 0 and config.dump_batches else None
    plans = plans_for(lambda step: run.plan(step, hdp), start_step, config.steps, config.plan_ahead)
    try:
        for step in range(start_step, config.steps):
            maybe_kill(rank, step)  # HDP_TEST_KILL only (hdp.runtime.launch.faults)
            deadlines.where = f"step {step}"  # the ring deadline watcher's prefix (NCCL)
            start = time.perf_counter()
            plan, plan_wait, planning = plans.get(step)  # made ahead (hdp.runtime.train.plan_ahead)
            lr = lr_at(step, lr=config.lr, steps=config.lr_steps, schedule=config.lr_schedule,
                       warmup_steps=config.warmup_steps, min_lr=config.final_lr)
            batch = run.stream.batch(step)
            if fault is not None:
                fault.current_step = step
            try:
                # This rank's memory so far rides in the step's plan check (no collective of its own).
                result = train_step(model, optimizer, plan, batch, rank=groups.coord.hdp, group=None, device=device,
                                    timeout_s=config.timeout_s, max_grad_norm=config.max_grad_norm, offload=offload,
                                    offload_layers=offload_layers, lr=lr, fold=local_memory(optimizer, device))
            except (PeerError, dist.DistError) as e:  # say where: step (the ring error names ring, micro-batch, peer)
                raise PeerError(f"step {step}: {e if isinstance(e, PeerError) else peer_cause(e)}") from e
            except ValueError as e:
                raise ValueError(f"step {step}: {e}") from None
            skipped = not result.finite and check_finite(result, batch, step, config.on_nan, rank)
            copied = offload.offloaded_bytes if offload else 0
            elapsed = step_elapsed(start, device)  # after the device finished the step: honest tokens/s
            record = {**metrics_record(step, plan, result, elapsed, copied, model=model.cfg, peak_tflops=peak,
                                      cost=run.cost),
                      "lr": lr, **fixed, **step_memory(result, optimizer, device, world_size, step == config.steps - 1),
                      "plan_wait_s": plan_wait, "planning_time_s": planning}
            if config.overrides:  # a deliberate change of the checkpoint's config (--override)
                record["overrides"] = ",".join(config.overrides)
            if skipped:  # null, not NaN: the metrics file stays strict JSON
                record.update(skipped=True, **{k: None for k in ("loss", "grad_norm") if not math.isfinite(record[k])})
            reporter.step(record)
            if dump is not None:  # after the step's timing: reading the whole batch is not training work
                dump.write(step, batch)
            after_step(ckpt, config, step + 1)
            if step == start_step:  # warm-up (compiles, first connections) is over: NCCL's watchdog shortens
                run_groups.end_warmup(groups, config.timeout_s)
            signum = stop.agreed(world_size) if ckpt is not None and config.save_dir else 0
            if signum and step + 1 < config.steps:
                return stop.save_and_stop(ckpt, config, step + 1, rank)
        if ckpt is not None:
            ckpt.wait()
            reporter.saved = list(ckpt.saved)
    finally:
        plans.close()
        reporter.close()
        if dump is not None:
            dump.close()
    if tp is not None and config.export_hf:  # every TP group gathers (collective); rank 0 writes
        from hdp.runtime.model.source import gather_full_model

        model = gather_full_model(model)
    if mesh.pp > 1 and config.export_hf:  # pipeline 0's stages to rank 0 (collective)
        from hdp.runtime.pipeline.gather import gather_stages

        model = gather_stages(model, groups)
    if config.export_hf and rank == 0:
        from hdp.runtime.model.hf_export import export_hf

        export_hf(model, config.export_hf, max_positions=config.max_seq_len, tokenizer=config.tokenizer)
    reporter.summary()
    return 0


def step_memory(result: StepResult, optimizer: Any, device: torch.device, world_size: int, last: bool
                ) -> dict[str, int | None]:
    """The record's memory figures: on several ranks the maxima folded into the plan check (as of the
    step's start); after the last step, and on one rank, as of the step's end."""
    if world_size == 1:
        return memory_fields(local_memory(optimizer, device))
    if last:  # once per run: one all-reduce of its own, so the run's last record is complete
        with collective("the memory figures' all-reduce"):
            return memory_record(optimizer, device)
    return memory_fields(list(result.maxima))


def check_finite(result: StepResult, batch: Any, step: int, on_nan: str, rank: int) -> bool:
    """A non-finite step (the update was skipped on every rank): raise (``stop``) or warn (``skip``).
    Returns True: the step was skipped. Either way the model keeps its last finite state."""
    docs = sorted({s.doc for s in batch.slices})
    shown = ", ".join(map(str, docs[:20])) + (f", ... ({len(docs)} in all)" if len(docs) > 20 else "")
    what = (f"step {step}: loss {result.loss:g}, gradient norm {result.grad_norm:g} (documents {shown})")
    if on_nan == "stop":
        raise NonFiniteStep(f"{what}: stopped before the update, so the last state is finite (--on-nan skip "
                            "would skip such steps)")
    if rank == 0:
        say(f"hdp train: warning: {what}: update skipped (--on-nan skip)")
    return True


def env_rank() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) under torchrun, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return None
