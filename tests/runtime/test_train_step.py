"""A full HDP training step over real processes (gloo) equals single-process training on the same batch.

The plan is made by hand so that it has everything that could break exactness at once: a ring of 2
and a ring of 3 (odd length, uneven pieces), whole sequences packed beside ring pieces, uneven
micro-batch counts (3, 2, 2) and a rank with no work at all.
"""

from __future__ import annotations

import os
import random
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hdp.data.batches import GlobalBatch, Slice
from hdp.data.corpus import BytesCorpus
from hdp.plan import get_model
from hdp.plan.types import MicroBatch, Plan, RankPlan, Ring, Segment, Sequence
from hdp.runtime.launch.spawn import watch
from hdp.runtime.model.decoder import build_model
from hdp.runtime.parallel.plan_check import check_world_size
from hdp.runtime.train.step import build_optimizer, train_step
from tests.conftest import free_port, plain_attention, reference_adamw, reference_step

pytestmark = pytest.mark.dist
LENGTHS = [24, 10, 7, 5, 13, 9]
MAX_GRAD_NORM = 0.5  # small enough that clipping is active
LR = 1e-2


def hand_plan() -> Plan:
    S = Segment
    mb = lambda segs, rings=(): MicroBatch(tuple(segs), tuple(rings), 0.0, 32)  # noqa: E731
    ranks = [
        # ring 0: sequence 0 (24) on ranks (0, 1), pieces of 6; ring 1: sequence 4 (13) on ranks (1, 2, 0)
        [mb([S(1, 0, 10), S(0, 0, 6), S(0, 18, 24)], [0]), mb([S(2, 0, 7)]), mb([S(4, 4, 6), S(4, 6, 8), S(3, 0, 5)], [1])],
        [mb([S(0, 6, 12), S(0, 12, 18)], [0]), mb([S(4, 0, 2), S(4, 10, 13)], [1])],
        [mb([S(5, 0, 9)]), mb([S(4, 2, 4), S(4, 8, 10)], [1])],
        [],
    ]
    return Plan("test", 4, 32, tuple(Sequence(i, n) for i, n in enumerate(LENGTHS)),
                (Ring(0, 0, (0, 1)), Ring(1, 4, (1, 2, 0))),
                tuple(RankPlan(r, tuple(m)) for r, m in enumerate(ranks)))


def hand_batch() -> GlobalBatch:
    rng = random.Random(7)
    docs = tuple(bytes(rng.randrange(256) for _ in range(n)) for n in LENGTHS)
    return GlobalBatch(BytesCorpus(docs), tuple(Slice(i, 0, n) for i, n in enumerate(LENGTHS)))


def _rank(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=0)
    opt = build_optimizer(model, LR)
    res = train_step(model, opt, hand_plan(), hand_batch(), rank=rank, group=None, device=torch.device("cpu"),
                     timeout_s=30, max_grad_norm=MAX_GRAD_NORM)
    torch.save({"loss": res.loss, "grad_norm": res.grad_norm, "mbs": res.local_micro_batches,
                "grads": {e.name: opt.grad_shard[e.offset:e.offset + e.numel].view(e.shape).clone() for e in opt.layout},
                "params": {n: p.detach().clone() for n, p in model.named_parameters()}},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def reference() -> dict:
    """Single process, plain dense attention, whole sequences, the textbook loss: no hdp code path."""
    model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=0,
                        attention=plain_attention)
    opt = reference_adamw(model, LR)
    batch = hand_batch()
    return reference_step(model, opt, [torch.tensor(list(batch.read(i, 0, n))) for i, n in enumerate(LENGTHS)],
                          MAX_GRAD_NORM)


@pytest.mark.timeout(90)
def test_step_equals_single_process_with_rings_uneven_micro_batches_and_an_idle_rank(tmp_path):
    mp.start_processes(_rank, args=(4, free_port(), str(tmp_path)), nprocs=4, join=True, start_method="fork")
    ref = reference()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(4)]
    assert [r["mbs"] for r in results] == [3, 2, 2, 0]
    for rank, got in enumerate(results):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-12), f"rank {rank} loss"
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-12), f"rank {rank} grad norm"
        for name in ref["grads"]:
            torch.testing.assert_close(got["grads"][name], ref["grads"][name], rtol=1e-10, atol=1e-13,
                                       msg=lambda m: f"rank {rank} grad {name}: {m}")
            torch.testing.assert_close(got["params"][name], ref["params"][name], rtol=1e-10, atol=1e-13,
                                       msg=lambda m: f"rank {rank} param {name}: {m}")


@pytest.mark.timeout(10)
def test_world_size_must_match_the_plan():
    with pytest.raises(ValueError, match="plan is for 4 ranks but 3 processes"):
        check_world_size(hand_plan(), 3)


def _diverging_rank(rank: int, port: int) -> None:
    """Ranks disagree on the data (seed): the fingerprint check must stop both before any ring starts."""
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.launch.worker import run_rank

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = TrainConfig(steps=1, global_batch_tokens=512, max_seq_len=256, capacity=128, seed=rank, progress=False,
                      timeout_s=20)
    os._exit(run_rank(cfg, rank, 2, rank, use_accelerator=False))


def _dead_rank(rank: int, port: int) -> None:
    """Rank 1 joins the group and dies before the first step; rank 0 must fail, not hang."""
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.launch.worker import run_rank

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if rank == 1:
        dist.init_process_group("gloo", rank=1, world_size=2)
        os._exit(9)
    cfg = TrainConfig(steps=2, global_batch_tokens=512, max_seq_len=256, capacity=128, progress=False, timeout_s=5)
    os._exit(run_rank(cfg, rank, 2, rank, use_accelerator=False))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target, code, message", [
    (_diverging_rank, 2, "ranks built different plans"),
    (_dead_rank, 9, "rank 0: a peer failed or did not answer within --timeout 5 s"),
])
def test_bad_runs_fail_on_every_rank_with_a_message_never_hang(target, code, message, capfd):
    ctx = mp.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, port)) for r in range(2)]
    start = time.monotonic()
    for p in procs:
        p.start()
    assert watch(procs, grace_s=10) == code
    assert time.monotonic() - start < 30
    err = capfd.readouterr().err
    assert message in err
    if target is _diverging_rank:
        assert "rank 0:" in err and "rank 1:" in err
