"""ZeRO 0/1/2 over real gloo processes equal single-process AdamW on the same global batches (float64).

One process group per world size (3 and 4) runs every zero stage for two steps, so the rings of 3
and 4, the uneven micro-batch counts and the idle rank are all exercised with few processes. The
reference is independent of hdp's optimizer: torch.optim.AdamW, torch's clip_grad_norm_, dense
attention, whole sequences. Every step also counts the collectives: the plan check's all-reduce, one
reduce-scatter, one all-gather and one scalar all-reduce, whatever the number of micro-batches of the rank.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hdp.data.batches import GlobalBatch, Slice
from hdp.data.corpus import BytesCorpus
from hdp.plan import build_cost_model, get_model, make_plan
from hdp.runtime.model.decoder import build_model
from tests.conftest import plain_attention, reference_adamw, reference_step
from hdp.runtime.train.step import build_optimizer, train_step
from tests.runtime.test_train_step import free_port, hand_batch, hand_plan

pytestmark = pytest.mark.dist
LR, MAX_GRAD_NORM, WD = 1e-2, 0.5, 0.1
CONFIGS = {"zero 0": (0, False), "zero 1": (1, False), "zero 2": (2, False), "zero 1 + recompute": (1, True)}
"""name -> (zero stage, recompute every layer in backward)."""


def random_batch(lengths: list[int], seed: int) -> GlobalBatch:
    rng = random.Random(seed)
    docs = tuple(bytes(rng.randrange(256) for _ in range(n)) for n in lengths)
    return GlobalBatch(BytesCorpus(docs), tuple(Slice(i, 0, n) for i, n in enumerate(lengths)))


def steps_for(world: int) -> list[tuple]:
    """(plan, batch) per step. 3 ranks: rings of 3 and 2. 4 ranks: the hand plan (idle rank), then a ring of 4."""
    cost = build_cost_model("tiny")
    if world == 3:
        lens = [[70, 40, 10, 7, 5], [90, 31, 30, 29, 6, 5]]
        return [(make_plan(ls, 3, 32, cost), random_batch(ls, s)) for s, ls in enumerate(lens)]
    ls = [100, 9, 20, 6]
    return [(hand_plan(), hand_batch()), (make_plan(ls, 4, 32, cost), random_batch(ls, 1))]


class Counter:
    """Counts collective calls (wraps torch.distributed's functions in this process)."""

    NAMES = ("reduce_scatter_single", "all_gather_single", "all_reduce", "all_gather")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.NAMES, 0)
        for name in self.NAMES:
            orig = getattr(dist, name)

            def wrapped(*a, _orig=orig, _name=name, **k):
                self.counts[_name] += 1
                return _orig(*a, **k)
            setattr(dist, name, wrapped)

    def take(self) -> dict[str, int]:
        out, self.counts = self.counts, dict.fromkeys(self.NAMES, 0)
        return out


def _rank(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    counter = Counter()
    out = {}
    for key, (zero, recompute) in CONFIGS.items():
        model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=0,
                            recompute=recompute)
        opt = build_optimizer(model, LR, WD, zero=zero)
        rec = []
        for plan, batch in steps_for(world):
            counter.take()
            res = train_step(model, opt, plan, batch, rank=rank, group=None, device=torch.device("cpu"),
                             timeout_s=30, max_grad_norm=MAX_GRAD_NORM)
            rec.append({"loss": res.loss, "grad_norm": res.grad_norm, "mbs": res.local_micro_batches,
                        "collectives": counter.take(), "range": opt.shard_range,
                        "grad_shard": opt.grad_shard.clone(),
                        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
                        "state_bytes": opt.state_bytes()})
        out[key] = {"steps": rec, "layout": [(e.name, e.offset, e.numel) for e in opt.layout]}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def reference(world: int) -> list[dict]:
    """Single process: dense attention, whole sequences, textbook loss, torch AdamW. No hdp optimizer."""
    model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=0,
                        attention=plain_attention)
    opt = reference_adamw(model, LR, WD)
    return [reference_step(model, opt, [torch.tensor(list(batch.read(i, 0, n))) for i, n in enumerate(batch.lengths)],
                           MAX_GRAD_NORM) for _, batch in steps_for(world)]


def check_against_reference(results: list[dict], ref: list[dict], world: int) -> None:
    for key, (zero, _) in CONFIGS.items():
        layout = results[0][key]["layout"]
        for step, want in enumerate(ref):
            flat = torch.cat([want["grads"][name].reshape(-1) for name, _, _ in layout])
            for rank, res in enumerate(results):
                got = res[key]["steps"][step]
                where = f"{key}, {world} ranks, step {step}, rank {rank}"
                assert got["loss"] == pytest.approx(want["loss"], rel=1e-9), where
                assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-9), where
                lo, hi = got["range"]
                shard = torch.zeros(hi - lo, dtype=torch.float64)
                real = flat[lo:min(hi, flat.numel())]
                shard[:real.numel()] = real  # padding is zero
                torch.testing.assert_close(got["grad_shard"], shard, rtol=1e-9, atol=1e-13, msg=lambda m: f"{where}: {m}")
                for name, value in want["params"].items():
                    torch.testing.assert_close(got["params"][name], value, rtol=1e-9, atol=1e-13,
                                               msg=lambda m: f"{where} param {name}: {m}")
                # The plan check is one MAX all-reduce (O(1), no all_gather unless plans differ); then the
                # gradients (all-reduce, or reduce-scatter + all-gather) and one scalar all-reduce.
                expected = ({"reduce_scatter_single": 0, "all_gather_single": 0, "all_reduce": 3, "all_gather": 0}
                            if zero == 0 else
                            {"reduce_scatter_single": 1, "all_gather_single": 1, "all_reduce": 2, "all_gather": 0})
                assert got["collectives"] == expected, where


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", [3, 4])
def test_zero_0_1_2_and_recompute_equal_single_process_adamw_every_step(world, tmp_path):
    mp.start_processes(_rank, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True, start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    mbs = [[r["zero 0"]["steps"][s]["mbs"] for r in results] for s in range(2)]
    assert any(len(set(m)) > 1 for m in mbs), mbs  # uneven micro-batch counts
    if world == 4:
        assert mbs[0] == [3, 2, 2, 0]  # an idle rank still takes part in every collective
    check_against_reference(results, reference(world), world)


@pytest.mark.timeout(60)
def test_one_rank_without_a_process_group_equals_the_reference():
    ref = reference(4)
    for zero in (1,):  # zero 1 on one rank is the whole buffer: the sharded code path without a group
        model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=0)
        opt = build_optimizer(model, LR, WD, zero=zero)
        for (plan, batch), want in zip(steps_for(4), ref):
            one = make_plan(batch.lengths, 1, 128, build_cost_model("tiny"))
            res = train_step(model, opt, one, batch, rank=0, group=None, device=torch.device("cpu"),
                             timeout_s=30, max_grad_norm=MAX_GRAD_NORM)
            assert res.loss == pytest.approx(want["loss"], rel=1e-9)
            assert res.grad_norm == pytest.approx(want["grad_norm"], rel=1e-9)
            for name, p in model.named_parameters():
                torch.testing.assert_close(p.detach(), want["params"][name], rtol=1e-9, atol=1e-13)
