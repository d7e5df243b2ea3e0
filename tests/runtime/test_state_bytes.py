"""The bytes each rank holds for parameters, gradients and optimizer states, measured on 4 gloo ranks,
equal a formula written here from the parameter count, dtype, zero stage and world size, and the
planner's ``hdp.plan.cost.memory.state_bytes`` (which the derived capacity uses)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hdp.plan import build_cost_model, get_model, make_plan
from hdp.plan.cost.memory import state_bytes
from hdp.runtime.observe.memory_stats import memory_record
from hdp.runtime.model.decoder import build_model
from hdp.runtime.train.step import build_optimizer, train_step
from tests.runtime.test_train_step import free_port
from tests.runtime.test_zero import random_batch

pytestmark = pytest.mark.dist
WORLD = 4
CASES = [(m, d, z) for m, d in (("tiny", "float32"), ("tiny", "bfloat16"), ("small", "bfloat16")) for z in (0, 1, 2)]


def expected_bytes(num_params: int, dtype: str, zero: int, world: int) -> int:
    """Params in the compute dtype; gradients, fp32 master (bf16 only) and two AdamW moments in the master dtype."""
    e = {"float32": 4, "bfloat16": 2}[dtype]
    m = 4
    master = dtype == "bfloat16"
    if zero == 0:
        return num_params * e + num_params * m + (num_params * m if master else 0) + 2 * num_params * m
    padded = -(-num_params // world) * world
    shard = padded // world
    grads = padded * m if zero == 1 else shard * m  # zero 2 keeps only its reduced shard between steps
    return padded * e + grads + (shard * m if master else 0) + 2 * shard * m


def _rank(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    batch = random_batch([70, 20, 9, 6], seed=5)
    out = {}
    for model_name, dtype, zero in CASES:
        plan = make_plan(batch.lengths, WORLD, 32, build_cost_model(model_name))
        model = build_model(get_model(model_name), dtype=getattr(torch, dtype), device=torch.device("cpu"), seed=0)
        opt = build_optimizer(model, 1e-3, zero=zero)
        train_step(model, opt, plan, batch, rank=rank, group=None, device=torch.device("cpu"), timeout_s=30)
        out[(model_name, dtype, zero)] = {**memory_record(opt, torch.device("cpu")), "numel": opt.numel}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_measured_state_bytes_equal_the_formula_on_4_ranks(tmp_path):
    mp.start_processes(_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    got = torch.load(tmp_path / "rank0.pt")
    for model_name, dtype, zero in CASES:
        rec = got[(model_name, dtype, zero)]
        n = get_model(model_name).num_params
        assert rec["numel"] == n  # the runtime model has the planner's parameter count
        want = expected_bytes(n, dtype, zero, WORLD)
        assert rec["state_bytes"] == want, (model_name, dtype, zero)
        assert state_bytes(n, dtype=dtype, zero=zero, world_size=WORLD).total == want
        assert rec["peak_memory_bytes"] is None  # CPU
    # sharding saves what it should: zero 1 < zero 0, zero 2 < zero 1
    for model_name in ("tiny", "small"):
        b = [got[(model_name, "bfloat16", z)]["state_bytes"] for z in (0, 1, 2)]
        assert b[0] > b[1] > b[2]
