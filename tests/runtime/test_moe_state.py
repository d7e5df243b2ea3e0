"""``tiny-moe``'s measured ``state_bytes`` on 4 gloo ranks equal the memory formula at --zero 0/1/2:
every expert (and router) is held, with its gradient and sharded optimizer states
(the measurement of tests/runtime/test_state_bytes.py, on the MoE preset)."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

import tests.runtime.test_state_bytes as sb
from hdp.plan import get_model
from hdp.plan.cost.memory import state_bytes
from tests.runtime.test_train_step import free_port

pytestmark = pytest.mark.dist
CASES = [("tiny-moe", d, z) for d in ("float32", "bfloat16") for z in (0, 1, 2)]


@pytest.mark.timeout(120)
def test_tiny_moe_state_bytes_equal_the_formula_on_4_ranks(tmp_path, monkeypatch):
    monkeypatch.setattr(sb, "CASES", CASES)  # the forked ranks measure these cases
    mp.start_processes(sb._rank, args=(free_port(), str(tmp_path)), nprocs=sb.WORLD, join=True, start_method="fork")
    got = torch.load(tmp_path / "rank0.pt")
    n = get_model("tiny-moe").num_params
    for _, dtype, zero in CASES:
        rec = got[("tiny-moe", dtype, zero)]
        assert rec["numel"] == n  # the runtime's experts are the planner's parameter count
        assert rec["state_bytes"] == state_bytes(n, dtype=dtype, zero=zero, world_size=sb.WORLD).total
        assert rec["state_bytes"] == sb.expected_bytes(n, dtype, zero, sb.WORLD)
