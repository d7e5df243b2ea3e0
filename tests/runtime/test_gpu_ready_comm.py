"""The NCCL path's communication, proved on CPU (issue 19, items 3, 4, 5, 9, 11).

* Which wait a ring takes is decided by ``comm.stream_ordered`` (a backend check a test can flip):
  the NCCL branch waits with a plain ``Work.wait()`` (stream-ordered: no host sync) and leaves the
  deadline to hdp's watcher thread, which still names step, ring, micro-batch and peer.
* Host syncs (``item``, ``tolist``, ``__bool__``, ``cpu``, ``__float__``, ... counted with a
  ``TorchFunctionMode``, plus every host-blocking ``wait(timeout=...)``) in a ring's forward and
  backward and in a whole train step do not grow with ring size or world size.
* Batched P2P goes on the groups made once at start-up: in a two-level ring, outer K/V and dK/dV on
  the second group, inner traffic on the world group (spied on ``dist.batch_isend_irecv``).
* Timeouts per backend, the flight recorder's defaults, a missing accelerator under torchrun.

One start of 4 gloo processes runs every multi-process case (float64: exact to 1e-10).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import threading
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.overrides import TorchFunctionMode

from hdp.data.batches import GlobalBatch, Slice
from hdp.data.corpus import BytesCorpus
from hdp.plan import get_model
from hdp.runtime.attention.dispatch import MicroBatchAttention, hdp_attention
from hdp.runtime.attention.layout import build_layout
from hdp.runtime.attention.ring import comm
from hdp.runtime.attention.ring.select import with_ring_algo
from hdp.runtime.model.decoder import build_model
from hdp.runtime.parallel import deadlines, devices
from hdp.runtime.parallel import groups as run_groups
from hdp.runtime.train.step import build_optimizer, train_step
from tests.conftest import build_plan, dense_reference, free_port, token_index

SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.cpu, torch.Tensor.__float__,
         torch.Tensor.__int__, torch.Tensor.numpy}


class SyncCounter(TorchFunctionMode):
    """Counts the calls that copy a device tensor to the host (each one a sync on an accelerator)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNCS:
            self.count += 1
        return func(*args, **(kwargs or {}))


class WorkSpy:
    """A backend work that records how it was waited on."""

    def __init__(self, work, log: list) -> None:
        self._work, self._log = work, log

    def wait(self, *args, **kwargs):
        self._log.append(kwargs.get("timeout", args[0] if args else None))
        return self._work.wait(*args, **kwargs)

    def is_completed(self) -> bool:
        return self._work.is_completed()


class P2PSpy:
    """Replaces ``dist.batch_isend_irecv``: records each op's (tag, group, peer) and each wait's timeout."""

    def __init__(self) -> None:
        self.ops: list[tuple[int, object, int]] = []
        self.waits: list[object] = []
        self._real = dist.batch_isend_irecv

    def __call__(self, ops):
        self.ops += [(op.tag, op.group, op.peer) for op in ops]
        return [WorkSpy(w, self.waits) for w in self._real(ops)]

    def reset(self) -> None:
        self.ops, self.waits = [], []

    def blocking_waits(self) -> int:
        return sum(t is not None for t in self.waits)


# -- in one process --------------------------------------------------------------------------------

def test_timeouts_per_backend_and_the_flight_recorder_defaults():
    assert run_groups.pg_timeout_s("gloo", 5.0, warm=False) == run_groups.pg_timeout_s("gloo", 5.0, warm=True) == 5.0
    assert run_groups.pg_timeout_s("nccl", 60.0, warm=False) == run_groups.WARMUP_TIMEOUT_S  # compiles, model build
    assert run_groups.pg_timeout_s("nccl", 60.0, warm=True) == run_groups.AFTER_WARMUP_FLOOR_S
    assert run_groups.pg_timeout_s("nccl", 900.0, warm=True) == 1800.0  # never before hdp's own deadline
    env = {"TORCH_NCCL_TRACE_BUFFER_SIZE": "50"}
    assert run_groups.nccl_environment(env) == {"TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
    assert env == {"TORCH_NCCL_TRACE_BUFFER_SIZE": "50", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}  # the user's kept


def test_warm_up_ends_by_shortening_only_the_nccl_groups(monkeypatch):
    calls = []
    monkeypatch.setattr(dist.distributed_c10d, "_set_pg_timeout", lambda t, g: calls.append((t.total_seconds(), g)))
    assert run_groups.end_warmup(run_groups.Groups(backend="gloo"), 60.0) is None and calls == []
    second = object()
    assert run_groups.end_warmup(run_groups.Groups(second=second, backend="nccl"), 60.0) == 600.0
    assert calls == [(600.0, None), (600.0, second)]


@pytest.mark.timeout(30)
def test_an_error_aborts_the_groups_and_a_clean_run_destroys_them(monkeypatch):
    from hdp.runtime.launch.worker import close_groups

    calls = []
    real_abort = dist.distributed_c10d._abort_process_group
    monkeypatch.setattr(dist.distributed_c10d, "_abort_process_group", lambda: calls.append("abort") or real_abort())
    real_destroy = dist.destroy_process_group
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy") or real_destroy())
    for ok in (False, True):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        run_groups.install(run_groups.create_groups("gloo", 10.0))
        close_groups(ok)
        assert not dist.is_initialized() and run_groups._installed is None
    assert calls == ["abort", "destroy"]  # a destroy waits for pending work a dead peer never completes


def test_each_rank_hashes_only_the_files_it_wrote(tmp_path):
    from hdp.runtime.checkpoint import files

    names = [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__2_1.distcp", "__10_0.distcp"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([i]) * (i + 1))
    own = {r: files.own_files(str(tmp_path), r) for r in range(11)}
    assert own[0] == [".metadata", "__0_0.distcp"] and own[2] == ["__2_0.distcp", "__2_1.distcp"]
    assert own[1] == ["__1_0.distcp"] and own[10] == ["__10_0.distcp"] and own[5] == []
    assert sorted(n for ns in own.values() for n in ns) == sorted(names)  # every file hashed exactly once
    merged = {n: d for r in own for n, d in files.digests(str(tmp_path), own[r]).items()}
    files.write_manifest(str(tmp_path), {"format": files.FORMAT}, merged)
    gathered = (tmp_path / files.MANIFEST).read_text()
    files.write_manifest(str(tmp_path), {"format": files.FORMAT})  # one process hashing everything
    assert (tmp_path / files.MANIFEST).read_text() == gathered
    with pytest.raises(AssertionError, match="digests of"):
        files.write_manifest(str(tmp_path), {"format": files.FORMAT}, {n: merged[n] for n in names[1:]})


def test_memory_figures_fold_into_the_plan_check_and_device_memory_is_absent_on_cpu(monkeypatch):
    from hdp.runtime.observe import memory_stats

    assert memory_stats.memory_fields([5, -1, -1]) == {"state_bytes": 5, "peak_memory_bytes": None}
    assert memory_stats.memory_fields([5, 7, 9]) == {"state_bytes": 5, "peak_memory_bytes": 7, "device_used_bytes": 9}
    monkeypatch.setattr(torch.accelerator, "get_memory_info", lambda device: (30, 100), raising=False)
    monkeypatch.setattr(torch.accelerator, "max_memory_allocated", lambda device: 42, raising=False)

    class Opt:
        def state_bytes(self) -> int:
            return 11

    assert memory_stats.local_memory(Opt(), torch.device("cuda", 0)) == [11, 42, 70]  # used = total - free
    assert memory_stats.local_memory(Opt(), torch.device("cpu")) == [11, -1, -1]


class FakeWork:
    def __init__(self, done: bool) -> None:
        self.done = done

    def is_completed(self) -> bool:
        return self.done


def test_deadline_watcher_drops_completed_works_and_names_the_first_late_one():
    watcher = deadlines.Deadlines(on_timeout=lambda line: None)
    built = []

    def message(text):
        def line():
            built.append(text)
            return text
        return line

    early, late = FakeWork(False), FakeWork(False)
    watcher._pending = [(10.0, early, message("ring 1")), (20.0, late, message("ring 2"))]
    assert watcher.check(now=5.0) is None and watcher.pending() == 2 and built == []  # built only when late
    early.done = True
    assert watcher.check(now=25.0) == "ring 2" and watcher.pending() == 1
    late.done = True
    assert watcher.check(now=30.0) is None and watcher.pending() == 0


class FakeAccelerator:
    """``torch.accelerator`` of a node where this process sees ``count`` CUDA devices."""

    def __init__(self, count: int) -> None:
        self.count = count

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self.count

    def current_accelerator(self):
        return torch.device("cuda")

    def set_device_index(self, index: int) -> None:
        raise AssertionError("no device may be set on this machine")


def test_missing_accelerator_is_an_error_under_torchrun_and_a_cpu_fallback_when_spawned(monkeypatch):
    monkeypatch.setattr(torch, "accelerator", FakeAccelerator(1))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(ValueError, match=r"LOCAL_RANK 1 but this process sees 1 cuda device\(s\) "
                                         r"\(CUDA_VISIBLE_DEVICES=3\): start at most 1 processes per node"):
        devices.pick_device(1, use_accelerator=True, strict=True)
    assert devices.pick_device(1, use_accelerator=True, strict=False) == torch.device("cpu")  # spawn decided


@pytest.mark.timeout(60)
def test_torchrun_rank_without_its_device_stops_with_one_line_before_any_collective(monkeypatch, capfd):
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.launch.spawn import launch

    monkeypatch.setattr(torch, "accelerator", FakeAccelerator(1))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = TrainConfig(steps=1, global_batch_tokens=512, max_seq_len=256, capacity=128, progress=False, timeout_s=5)
    assert launch(cfg, 1) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["hdp train: error: rank 1: LOCAL_RANK 1 but this process sees 1 cuda device(s): start at most 1 "
                   "processes per node (torchrun --nproc-per-node 1), or let every task see all of its node's devices"]
    assert not dist.is_initialized()


def test_ranks_that_disagree_on_the_accelerator_fail_together_on_the_store():
    store = dist.HashStore()
    errors: dict[int, str] = {}

    def rank(r: int, device_type: str) -> None:
        try:
            devices.check_devices_agree(store, 3, device_type, timeout_s=10)
        except ValueError as e:
            errors[r] = str(e)

    threads = [threading.Thread(target=rank, args=(r, t)) for r, t in enumerate(("cuda", "cpu", "cuda"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert sorted(errors) == [0, 1, 2]
    assert errors[1] == ("2 of 3 ranks found an accelerator and 1 did not (this rank: cpu): give every rank a "
                         "visible device, or none (all on CPU)")
    agreeing = dist.HashStore()
    threads = [threading.Thread(target=devices.check_devices_agree, args=(agreeing, 2, "cpu", 10)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert agreeing.add("accelerated", 0) == 0 and agreeing.add("arrived", 0) == 2


# -- across processes ------------------------------------------------------------------------------

WORLD, GPN = 4, 2
LENGTHS = [29, 7, 5, 6]


def _ring_refs(n: int, hq: int, hkv: int):
    g = torch.Generator().manual_seed(77)
    q, k, v, dout = (torch.randn(n, h, 8, generator=g, dtype=torch.float64) for h in (hq, hkv, hkv, hq))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, _ = dense_reference(*leaves, torch.zeros(n), torch.arange(n))
    out.backward(dout)
    return (q, k, v, dout, out.detach(), *(t.grad for t in leaves))


def _ring_step(plan, rank: int, refs, counter: SyncCounter | None = None):
    """Forward and backward of the rank's one micro-batch (one ring); checks it against the dense reference."""
    layout = build_layout(plan, rank, 0)
    _, positions = token_index(layout)
    rows = [t[positions] for t in refs]
    batch = MicroBatchAttention(layout, timeout_s=30.0)
    q, k, v = (rows[j].clone().requires_grad_() for j in range(3))
    with counter if counter is not None else contextlib.nullcontext():
        out = hdp_attention(q, k, v, batch)
        out.backward(rows[3])
    for name, got, j in (("out", out, 4), ("dq", q.grad, 5), ("dk", k.grad, 6), ("dv", v.grad, 7)):
        torch.testing.assert_close(got, rows[j], rtol=1e-10, atol=1e-10, msg=lambda m: f"rank {rank} {name}: {m}")
    return batch.rings[0].ran


def _ring_plan(members: tuple[int, ...], algo: str):
    return with_ring_algo(build_plan(WORLD, [LENGTHS[0]], [[("ring", 0, members)]]), algo, GPN)


def _batch() -> GlobalBatch:
    rng = random.Random(3)
    docs = tuple(bytes(rng.randrange(256) for _ in range(n)) for n in LENGTHS)
    return GlobalBatch(BytesCorpus(docs), tuple(Slice(i, 0, n) for i, n in enumerate(LENGTHS)))


def _step_plans():
    """Three layouts of one batch: world 2 with a ring of 2, world 4 with rings of 2 and of 4."""
    return {
        (2, 2): build_plan(2, LENGTHS, [[("doc", 1, 0), ("doc", 2, 1), ("doc", 3, 1), ("ring", 0, (0, 1))]]),
        (4, 2): build_plan(4, LENGTHS, [[("doc", 1, 0), ("doc", 2, 2), ("doc", 3, 3), ("ring", 0, (0, 1))]]),
        (4, 4): build_plan(4, LENGTHS, [[("doc", 1, 0), ("doc", 2, 2), ("doc", 3, 3), ("ring", 0, (0, 1, 2, 3))]]),
    }


def _rank(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    groups = run_groups.create_groups("gloo", 60.0)
    run_groups.install(groups)
    pair = dist.new_group([0, 1])  # world size 2 for the step below (every rank must create it)
    spy = P2PSpy()
    dist.batch_isend_irecv = spy  # comm.py posts through dist.batch_isend_irecv
    out: dict = {}
    refs = _ring_refs(LENGTHS[0], 4, 2)

    # Item 5: which group each stream posts on, in a two-level ring (2 nodes x 2) and a flat one.
    assert _ring_step(_ring_plan((0, 1, 2, 3), "two-level"), rank, refs) == "two-level"
    def name(g) -> str:  # P2POp resolves group=None to the default group
        return "second" if g is groups.second else "world" if g in (None, dist.group.WORLD) else "other"

    out["two_level_ops"] = [(tag, name(g)) for tag, g, _ in spy.ops]
    spy.reset()
    assert _ring_step(_ring_plan((0, 1, 2, 3), "bidirectional"), rank, refs) == "bidirectional"
    out["bidirectional_ops"] = [(tag, name(g)) for tag, g, _ in spy.ops]

    # Item 3: waits per backend branch, and host syncs per ring size (ranks 0-3 in a 4-ring, 0-1 in a 2-ring).
    for branch in ("gloo", "nccl"):
        comm.stream_ordered = (lambda group: True) if branch == "nccl" else (lambda group: False)
        for size in (2, 4):
            spy.reset()
            counter = SyncCounter()
            if rank < size:
                _ring_step(_ring_plan(tuple(range(size)), "flat"), rank, refs, counter)
            out[f"ring_{branch}_{size}"] = (counter.count, spy.blocking_waits(), len(spy.waits))
            dist.barrier()
    out["watched"] = deadlines.deadlines().pending() >= 0 and deadlines.deadlines()._thread is not None

    # Item 9: host syncs of a whole train step (NCCL branch) for world 2 vs 4 and rings of 2 vs 4.
    for (world, size), plan in _step_plans().items():
        group = pair if world == 2 else None
        if rank < world:
            model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=0)
            opt = build_optimizer(model, 1e-2, group=group)
            spy.reset()
            counter = SyncCounter()
            with counter:
                res = train_step(model, opt, plan, _batch(), rank=rank, group=group, device=torch.device("cpu"),
                                 timeout_s=30, fold=[rank, 10 - rank])
            out[f"step_{world}_{size}"] = (counter.count + spy.blocking_waits(), res.loss, res.grad_norm, res.maxima)
        dist.barrier()
    comm.stream_ordered = lambda group: str(dist.get_backend(group)) == "nccl"

    # Item 4: a checkpoint on the host (gloo) group; each rank hashes only the files it wrote.
    from hdp.runtime.checkpoint import files
    from hdp.runtime.checkpoint.state import Checkpointer
    from hdp.runtime.config import TrainConfig

    hashed: list[str] = []
    real_digest = files.file_digest
    files.file_digest = lambda path: hashed.append(os.path.basename(path)) or real_digest(path)
    ckpt = Checkpointer(TrainConfig(save_dir=os.path.join(out_dir, "ckpt"), progress=False), opt, "data", rank, WORLD)
    out["checkpoint_group_is_host"] = ckpt.group is groups.host
    ckpt.save(1)
    out["hashed"], hashed[:] = list(hashed), []
    path = os.path.join(out_dir, "ckpt", "step-000001")
    assert ckpt.restore(path) == 1
    out["verified"], hashed[:] = list(hashed), []
    dist.barrier()
    if rank == 0:  # same size, one byte changed: only the rank that hashes it can see it
        with open(os.path.join(path, "__3_0.distcp"), "r+b") as f:
            byte = f.read(1)
            f.seek(0)
            f.write(bytes([byte[0] ^ 1]))
    dist.barrier()
    try:
        ckpt.restore(path)
        out["corrupt"] = None
    except ValueError as e:
        out["corrupt"] = str(e)
    files.file_digest = real_digest
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.timeout(150)
def test_groups_waits_and_host_syncs_across_four_gloo_ranks(tmp_path):
    mp.start_processes(_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for rank, got in enumerate(results):
        # Two-level: inner K/V (11) and dK/dV (12) on the world group, outer K/V (13) and dK/dV (14) on the second.
        groups_by_tag = {}
        for tag, group in got["two_level_ops"]:
            groups_by_tag.setdefault(tag, set()).add(group)
        assert groups_by_tag == {11: {"world"}, 12: {"world"}, 13: {"second"}, 14: {"second"}}, (rank, groups_by_tag)
        bi = {}
        for tag, group in got["bidirectional_ops"]:
            bi.setdefault(tag, set()).add(group)
        assert bi == {11: {"world"}, 15: {"world"}, 12: {"second"}, 16: {"second"}}, (rank, bi)
    for rank in (0, 1):  # members of both rings
        got = results[rank]
        syncs2, blocking2, waits2 = got["ring_nccl_2"]
        syncs4, blocking4, waits4 = got["ring_nccl_4"]
        assert blocking2 == blocking4 == 0 and waits4 > waits2 > 0  # every wait stream-ordered, none timed
        assert syncs2 == syncs4, (rank, got["ring_nccl_2"], got["ring_nccl_4"])
        # The gloo branch blocks the host at every ring step: the counter sees it grow with the ring.
        assert got["ring_gloo_4"][1] > got["ring_gloo_2"][1] > 0 and got["ring_gloo_4"][1] == got["ring_gloo_4"][2]
        assert got["watched"]
        counts = {key: got[f"step_{key[0]}_{key[1]}"][0] for key in ((2, 2), (4, 2), (4, 4))}
        assert len(set(counts.values())) == 1, (rank, counts)  # no growth with world size or ring size
        assert counts[(4, 4)] <= 4, counts  # the plan check's read, the loss and the norm: O(1)
    losses = {(r, k): results[r][f"step_{k[0]}_{k[1]}"][1:3] for r in range(2) for k in ((2, 2), (4, 2), (4, 4))}
    first = next(iter(losses.values()))
    for key, (loss, norm) in losses.items():  # one batch, three layouts: one loss and one gradient norm
        assert loss == pytest.approx(first[0], rel=1e-12) and norm == pytest.approx(first[1], rel=1e-12), key
    assert results[0]["step_4_4"][3] == (3, 10) and results[1]["step_2_2"][3] == (1, 10)  # folded maxima
    for rank, got in enumerate(results):  # each rank hashed its own file; rank 0 also DCP's .metadata
        assert got["checkpoint_group_is_host"]
        assert got["hashed"] == ([".metadata"] if rank == 0 else []) + [f"__{rank}_0.distcp"], (rank, got["hashed"])
    names = [".metadata"] + [f"__{r}_0.distcp" for r in range(WORLD)]
    # Resuming, the 4 ranks hash the 5 files once between them (not 4 times each) ...
    assert sorted(n for got in results for n in got["verified"]) == names
    assert [len(got["verified"]) for got in results] == [2, 1, 1, 1]
    # ... and a file only one rank hashed stops every rank with the same line.
    corrupt = {got["corrupt"] for got in results}
    assert len(corrupt) == 1 and "is corrupt: __3_0.distcp does not match the SHA-256" in corrupt.pop()


def _late_peer(rank: int, port: int) -> None:
    """Rank 0 waits on the NCCL branch for a receive that rank 1 never posts: the watcher must name it."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    if rank == 1:
        time.sleep(6)  # alive, silent
        os._exit(0)
    comm.stream_ordered = lambda group: True
    deadlines.where = "step 7"
    ring = comm.RingComm(5, 2, prev_rank=1, next_rank=1, timeout_s=1.0)
    ring.send_recv(torch.empty(0), torch.empty(4))
    ring.commit()
    threading.Timer(0.2, lambda: setattr(deadlines, "where", "step 8")).start()  # the host runs on (NCCL)
    ring.wait()  # blocks on gloo; the watcher thread ends the process, naming the wait's own step
    os._exit(0)


@pytest.mark.dist
@pytest.mark.timeout(60)
def test_stream_ordered_wait_still_names_step_ring_micro_batch_and_peer(capfd):
    from hdp.runtime.launch.spawn import watch

    ctx = mp.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_late_peer, args=(r, port)) for r in range(2)]
    start = time.monotonic()
    for p in procs:
        p.start()
    procs[0].join(20)
    assert procs[0].exitcode == 3 and time.monotonic() - start < 15
    assert watch(procs, grace_s=10) == 3
    err = capfd.readouterr().err
    assert ("hdp train: error: rank 0: step 7: ring 5, micro-batch 2: receive from rank 1 did not complete within "
            "1 s (this rank 0); is that peer alive and running the same plan?") in err, err


def _peers_benchmark():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "peers.py")
    spec = importlib.util.spec_from_file_location("bench_peers", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peers_per_rank_are_the_ranks_each_ring_algorithm_exchanges_blocks_with():
    """benchmarks/peers.py (issue 19, item 6) counts the peers the ring code really talks to."""
    from hdp.runtime.attention.ring.two_level import _Grid
    from hdp.runtime.attention.ring.flat import RingContext

    bench = _peers_benchmark()
    assert bench.ring_peers((4, 1, 0), "flat", 2) == {4: {1, 0}, 1: {4, 0}, 0: {1, 4}}
    assert bench.ring_peers((0, 1), "bidirectional", 8) == {0: {1}, 1: {0}}
    ranks = (4, 1, 0, 3, 5, 2)  # 3 nodes x 2: the two-level grid of test_ring_algos
    peers = bench.ring_peers(ranks, "two-level", 2)
    plan = with_ring_algo(build_plan(6, [40], [[("ring", 0, ranks)]]), "two-level", 2)
    for rank in ranks:  # the ring code's own inner and outer neighbours
        grid = _Grid(RingContext(build_layout(plan, rank, 0).rings[0], 0, groups=run_groups.Groups()))
        assert peers[rank] == {*grid.inner_peers(), *grid.outer_peers()} - {rank}, rank
    out = bench.main(["--gpus", "64", "--steps", "2", "--tokens", "200000", "--max-len", "65536"])
    after = out["peers_per_rank_after_steps"]  # keyed by steps (ints here, strings once in JSON)
    assert after[1]["max"] <= after[2]["max"] and len(out["new_connections_per_step"]) == 2
