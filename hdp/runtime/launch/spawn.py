"""Start the ranks: under torchrun run this process as one rank; otherwise spawn ``nproc`` local
processes and watch them. Local ranks use the local accelerators (one each, NCCL) when there are at
least ``nproc`` of them, else CPU processes over gloo (decided once, here, for every rank). Under
torchrun an expected accelerator that a rank cannot see is an error (``parallel.devices``).

The parent never waits on a dead rank: when one exits non-zero it gives the others a short grace to
report their own error, then terminates the rest and returns non-zero. So a failure anywhere ends
the whole run with a message, never a hang.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import socket
import sys
import time

from hdp.runtime.config import TrainConfig

MAX_GRACE_S = 10.0
"""Longest the survivors of a failed rank may take to report their own error before being stopped."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stopped(Exception):
    """The launcher got SIGTERM: stop every rank as Ctrl-C does."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Stopped()


def die_with_parent() -> None:
    """Ranks must not outlive their launcher, even one killed with SIGKILL: ask the kernel to SIGKILL
    this process when its parent dies (Linux prctl PR_SET_PDEATHSIG), and leave Ctrl-C / SIGTERM to
    the parent, which stops every rank with one line instead of a traceback per rank."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked child inherits the parent's handler
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the prctl took effect
        os._exit(1)


def _child(config: TrainConfig, rank: int, world_size: int, port: int, threads: int, use_accelerator: bool) -> None:
    die_with_parent()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(threads)
    from hdp.runtime.launch.worker import run_rank

    sys.exit(run_rank(config, rank, world_size, rank, use_accelerator=use_accelerator))


def local_accelerators() -> int:
    """Accelerators this machine has (0 without one); counting them does not initialise a device."""
    import torch

    return torch.accelerator.device_count() if torch.accelerator.is_available() else 0


def launch(config: TrainConfig, nproc: int) -> int:
    """Run training; returns the exit code (0 when every rank succeeded)."""
    from hdp.runtime.train.run import Run
    from hdp.runtime.launch.restart import resume_defaults
    from hdp.runtime.launch.worker import env_rank, run_rank
    from hdp.runtime.parallel.mesh import Mesh

    config = resume_defaults(config)  # --resume DIR keeps saving into DIR
    under = env_rank()
    if under is not None:
        rank, world_size, local_rank = under
        config = nodes_from_torchrun(config, world_size)
        # torchrun: each rank picks its device alone, so one without its accelerator is an error, not a
        # CPU fallback that would leave the ranks on different backends (parallel.devices).
        return run_rank(config, rank, world_size, local_rank, use_accelerator=True, torchrun=True)
    from hdp.runtime.train.limits import check_local_ranks

    use_accelerator = local_accelerators() >= nproc
    check_local_ranks(nproc, use_accelerator)  # before the planner, which is slow at 100,000 ranks too
    # Cheap checks once, in the parent: one clear line instead of the same error from every rank.
    hdp = Mesh.for_world(nproc, config.tp, config.pp).hdp  # the plan's ranks: processes / (tp x pp)
    run = Run.from_config(config, hdp)
    config = run.config  # the derived capacity, decided once for every rank
    run.check_feasible(hdp, "accelerator" if use_accelerator else None)
    run.offload_layers()
    if config.dump_batches:
        from hdp.data.dump import check_writable

        check_writable(config.dump_batches)
    from hdp.runtime.launch.restart import check_resume, run_with_restarts

    resuming = check_resume(config, run.stream.corpus.doc_lengths) is not None
    if config.metrics and not resuming:  # a resumed run keeps the steps before its checkpoint
        try:
            open(config.metrics, "w").close()
        except OSError as e:
            raise ValueError(f"cannot write --metrics {config.metrics!r}: {e.strerror or e}") from None
    if config.export_hf:
        from hdp.runtime.model.hf_export import check_export_dir

        check_export_dir(config.export_hf)
    code = run_with_restarts(config, nproc, spawn)
    if code != 0:  # a run that failed before its first step leaves no empty file behind
        for path in (config.metrics, config.dump_batches):
            if path and os.path.isfile(path) and os.path.getsize(path) == 0:
                os.remove(path)
    return code


def nodes_from_torchrun(config: TrainConfig, world_size: int) -> TrainConfig:
    """Under torchrun across nodes, ``--gpus-per-node`` defaults to torchrun's LOCAL_WORLD_SIZE (the ranks
    of this node), so the planner places rings by node as ``hdp plan --gpus-per-node`` would; on one
    node (LOCAL_WORLD_SIZE == WORLD_SIZE) nothing changes."""
    import dataclasses

    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    if config.gpus_per_node is not None or not local.isdigit() or not 0 < int(local) < world_size:
        return config
    return dataclasses.replace(config, gpus_per_node=int(local))


def spawn(config: TrainConfig, nproc: int) -> int:
    use_accelerator = local_accelerators() >= nproc
    # fork: children reuse the parent's imports (torch takes seconds to import on a small machine).
    # Safe for CPU ranks: the parent has run no torch ops and started no threads. Accelerator ranks
    # start fresh (a device runtime must not be inherited through fork), as does any system without fork.
    fork = not use_accelerator and "fork" in mp.get_all_start_methods()
    ctx = mp.get_context("fork" if fork else "spawn")
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // nproc)
    procs = [ctx.Process(target=_child, args=(config, r, nproc, port, threads, use_accelerator), name=f"hdp-rank-{r}")
             for r in range(nproc)]
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for p in procs:
            p.start()
        # Survivors notice a dead peer within --timeout; let them say so themselves, within reason.
        return watch(procs, grace_s=min(config.timeout_s + 1.0, MAX_GRACE_S))
    except (KeyboardInterrupt, Stopped) as e:
        if config.save_dir:  # the ranks save the step they are in, then exit (restart.StopRequest)
            _let_ranks_save(procs, save_grace_s(config))
        _stop(procs)
        why = "interrupted" if isinstance(e, KeyboardInterrupt) else "stopped by SIGTERM"
        print(f"hdp train: {why}: stopped all {len(procs)} ranks", file=sys.stderr, flush=True)
        return 130 if isinstance(e, KeyboardInterrupt) else 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def save_grace_s(config: TrainConfig) -> float:
    """How long ranks asked to stop may take to finish their step and save it: the step in flight and
    the save can each wait up to --timeout on a peer; at least 30 s (what clusters usually give)."""
    return max(30.0, 2 * config.timeout_s)


def _let_ranks_save(procs: list, grace_s: float) -> None:
    """SIGTERM every live rank once (each finishes its step and saves, ``StopRequest``) and wait for them,
    at most ``grace_s``; a second Ctrl-C or SIGTERM stops at once."""
    live = [p for p in procs if p.exitcode is None]
    if not live:
        return
    print(f"hdp train: saving a checkpoint before stopping (at most {grace_s:g} s; Ctrl-C again to stop now)",
          file=sys.stderr, flush=True)
    for p in live:
        p.terminate()
    deadline = time.monotonic() + grace_s
    try:
        for p in live:
            p.join(max(0.0, deadline - time.monotonic()))
    except (KeyboardInterrupt, Stopped):
        pass


def describe_exit(rank: int, code: int) -> str | None:
    """Why rank ``rank`` ended with ``code``; None when the rank printed its reason itself."""
    from hdp.runtime.launch.worker import REPORTED_CODES

    if code in REPORTED_CODES:
        return None
    if code == -signal.SIGKILL:
        return (f"rank {rank} was killed (SIGKILL): probably out of memory (the kernel's OOM killer; see dmesg), "
                "or killed by someone")
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"rank {rank} was killed by {name}"
    return f"rank {rank} failed (exit code {code})"


def watch(procs: list, grace_s: float = 3.0, poll_s: float = 0.05) -> int:
    """Wait for all ranks; on the first failure stop the rest after ``grace_s``. Returns the exit code:
    the cause's (a rank's own error or a signal: 1), before the survivors' peer failure (3)."""
    from hdp.runtime.launch.worker import EXIT_PEER_FAILURE

    failed_at: float | None = None
    failures: list[int] = []  # exit codes in the order they were seen
    seen: set[int] = set()
    stopped: list[int] = []

    def look() -> None:
        for r, p in enumerate(procs):
            if p.exitcode not in (None, 0) and r not in seen and r not in stopped:
                seen.add(r)
                failures.append(p.exitcode)
                why = describe_exit(r, p.exitcode)  # every rank that did not say why itself
                if why is not None:
                    print(f"hdp train: {why}; stopping the run", file=sys.stderr, flush=True)

    try:
        while any(p.exitcode is None for p in procs):
            look()
            if failures and failed_at is None:
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                stopped = [r for r, p in enumerate(procs) if p.exitcode is None]
                _stop(procs)
                if stopped:
                    print(f"hdp train: stopped ranks {stopped} (no answer within {grace_s:g} s of the failure)",
                          file=sys.stderr, flush=True)
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:  # the caller stops the ranks (after letting them save, with --save-dir)
        raise
    for p in procs:
        p.join()
    look()  # ranks that ended between the last poll and the loop's end
    if not failures:
        return 0
    code = next((c for c in failures if c != EXIT_PEER_FAILURE), failures[0])
    return code if code > 0 else 1  # negative: killed by a signal


def _stop(procs: list) -> None:
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            p.kill()
            p.join()
