"""A full training step with two-level and bidirectional rings equals single-process training.

Six gloo ranks declared as three nodes of two (``gpus_per_node=2``), one process group for every
case: a two-level ring of 2 nodes x 2 beside whole sequences and a ring inside one node (runs
flat), then a two-level ring of 3 nodes x 2 in a scrambled rank order; the same plan with every ring
bidirectional; and ``hdp train`` itself with the flags, 4 ranks vs 1. Loss and grad norm to 1e-9
(in fact to float64 summation order), every gradient to 1e-10.
"""

from __future__ import annotations

import json
import os
import random
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from hdp.data.batches import GlobalBatch, Slice
from hdp.data.corpus import BytesCorpus
from hdp.plan import get_model
from hdp.runtime.attention.layout import Span
from hdp.runtime.model.decoder import build_model
from hdp.runtime.attention.ring.select import rings_by_algo, with_ring_algo
from hdp.runtime.train.step import build_optimizer, train_step
from tests.conftest import build_plan, free_port, plain_attention
from tests.runtime.test_attention_ring import _init, _start
from tests.runtime.test_train_cli import hdp_train, read_metrics

pytestmark = pytest.mark.dist
WORLD, GPN = 6, 2
LENGTHS = [24, 10, 13, 29, 7, 5, 9]
ROUNDS = [
    [("doc", 1, 4), ("ring", 0, (0, 1, 2, 3)), ("ring", 2, (5, 4))],
    [("ring", 3, (4, 1, 0, 3, 5, 2))],
    [("doc", 4, 0), ("doc", 5, 3), ("doc", 6, 5)],
]
ALGOS = {"two-level": {"two-level": 2, "flat": 1}, "bidirectional": {"bidirectional": 3}}
MAX_GRAD_NORM, LR = 0.5, 1e-2


def _batch() -> GlobalBatch:
    rng = random.Random(3)
    docs = tuple(bytes(rng.randrange(256) for _ in range(n)) for n in LENGTHS)
    return GlobalBatch(BytesCorpus(docs), tuple(Slice(i, 0, n) for i, n in enumerate(LENGTHS)))


def _rank(rank: int, world: int, port: int, out_dir: str) -> None:
    _init(rank, world, port)
    for algo in ALGOS:
        plan = with_ring_algo(build_plan(WORLD, LENGTHS, ROUNDS), algo, GPN)
        model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=0)
        opt = build_optimizer(model, LR)
        res = train_step(model, opt, plan, _batch(), rank=rank, group=None, device=torch.device("cpu"),
                         timeout_s=30, max_grad_norm=MAX_GRAD_NORM)
        grads = {e.name: opt.grad_shard[e.offset:e.offset + e.numel].view(e.shape).clone() for e in opt.layout}
        torch.save({"loss": res.loss, "grad_norm": res.grad_norm, "grads": grads, "by_algo": rings_by_algo(plan, 2)},
                   os.path.join(out_dir, f"{algo}.{rank}.pt"))
    dist.destroy_process_group()


def _reference() -> dict:
    """One process, dense attention on whole sequences, the textbook loss: no hdp attention code."""
    model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=0,
                        attention=plain_attention)
    batch, total = _batch(), torch.zeros((), dtype=torch.float64)
    for i, n in enumerate(LENGTHS):
        ids = torch.tensor(list(batch.read(i, 0, n)))
        logits = model(ids, torch.arange(n), SimpleNamespace(spans=(Span(i, 0, n, 0),), rings=()))
        total = total + F.cross_entropy(logits[:-1], ids[1:], reduction="sum")
    loss = total / sum(n - 1 for n in LENGTHS)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    return {"loss": float(loss.detach()), "grad_norm": float(norm), "grads": {n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.timeout(120)
def test_step_with_two_level_and_bidirectional_rings_equals_single_process(tmp_path):
    _start(_rank, (WORLD, free_port(), str(tmp_path)), WORLD)
    ref = _reference()
    for algo, by_algo in ALGOS.items():
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"{algo}.{rank}.pt")
            assert got["by_algo"] == by_algo
            assert got["loss"] == pytest.approx(ref["loss"], rel=1e-9), f"{algo} rank {rank} loss"
            assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-9), f"{algo} rank {rank} grad norm"
            for name, g in ref["grads"].items():
                torch.testing.assert_close(got["grads"][name], g, rtol=1e-10, atol=1e-13,
                                           msg=lambda m: f"{algo} rank {rank} grad {name}: {m}")


@pytest.mark.timeout(150)
def test_hdp_train_flags_two_level_on_4_ranks_equals_1_rank(tmp_path):
    common = ["--dtype", "float64", "--steps", "1", "--global-batch-tokens", "1024", "--max-seq-len", "512",
              "--no-progress"]
    runs = {}
    for name, args in (("one", ["--nproc", "1", "--capacity", "512"]),
                       ("two-level", ["--nproc", "4", "--gpus-per-node", "2", "--ring-algo", "two-level"])):
        proc = hdp_train(*common, *args, "--metrics", str(tmp_path / f"{name}.jsonl"))
        assert proc.returncode == 0, proc.stderr
        (runs[name],) = read_metrics(tmp_path / f"{name}.jsonl")
    two = runs["two-level"]
    assert two["rings_by_algo"].get("two-level", 0) >= 1, two["rings_by_algo"]
    assert sum(two["rings_by_algo"].values()) == two["rings"]
    assert two["loss"] == pytest.approx(runs["one"]["loss"], rel=1e-9)
    assert two["grad_norm"] == pytest.approx(runs["one"]["grad_norm"], rel=1e-9)
    json.dumps(two)  # the record stays plain JSON


def test_bad_ring_flags_exit_2_with_one_line(capsys):
    from hdp.cli import main

    assert main(["train", "--gpus-per-node", "0"]) == 2
    err = capsys.readouterr().err
    assert "--gpus-per-node must be >= 1" in err and err.count("\n") == 1


def test_gpus_per_node_alone_plans_two_level_rings_by_node():
    """--gpus-per-node without --ring-algo: the planner places rings by node with two-level rings
    (the default of hdp plan too); without either, rings stay flat as before."""
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.train.run import Run

    common = dict(global_batch_tokens=1024, max_seq_len=512)  # capacity derived: rings of 4 ranks
    aware = Run.from_config(TrainConfig(gpus_per_node=2, **common), num_ranks=4).plan(0, 4)
    assert aware.gpus_per_node == 2 and rings_by_algo(aware, 2).get("two-level", 0) >= 1
    plain = Run.from_config(TrainConfig(**common), num_ranks=4).plan(0, 4)
    assert plain.gpus_per_node == 0 and set(rings_by_algo(plain, 2)) == {"flat"}
