"""Resume restores every buffer through the staging path GPUs take (issue 19, item 2).

One process, a gloo world of 1. Every buffer of ``ShardedAdamW`` (parameters, fp32 master weights,
both AdamW moments) and the step counter are set to values a fresh optimizer does not have, saved,
and restored into a *fresh* optimizer; each must then equal the saved values exactly. With
``copying_mesh`` ``DTensor.from_local`` copies its local tensor, as it does for a GPU shard on the
CPU mesh: the old restore (DCP filling the live buffers through DTensors) left them fresh there.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from hdp.plan import get_model
from hdp.runtime.checkpoint import files, state
from hdp.runtime.config import TrainConfig
from hdp.runtime.model.decoder import build_model
from hdp.runtime.optim.zero import ShardedAdamW

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def world_of_one(tmp_path):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def buffers(o: ShardedAdamW) -> dict[str, torch.Tensor]:
    return {"param": o.flat_param[: o.numel], "master": o.master[: o.numel], "exp_avg": o.exp_avg[: o.numel],
            "exp_avg_sq": o.exp_avg_sq[: o.numel]}


def optimizer(dtype: torch.dtype, zero: int) -> ShardedAdamW:
    model = build_model(get_model("tiny"), dtype=dtype, device=torch.device("cpu"), seed=0)
    return ShardedAdamW(model, lr=1e-3, zero=zero)


@pytest.mark.parametrize("copying_mesh", [False, True])
@pytest.mark.parametrize("dtype,zero", [(torch.bfloat16, 1), (torch.bfloat16, 0), (torch.float64, 1)])
def test_restore_into_a_fresh_optimizer_sets_every_buffer_to_the_saved_values(
        world_of_one, tmp_path, monkeypatch, dtype, zero, copying_mesh):
    if copying_mesh:  # what the CPU mesh does with a GPU shard: DCP sees a copy, never the live buffer
        real = state.DTensor.from_local
        monkeypatch.setattr(state.DTensor, "from_local",
                            lambda local, *a, **k: real(local.clone(), *a, **k))
    config = TrainConfig(model="tiny", dtype={torch.bfloat16: "bfloat16", torch.float64: "float64"}[dtype],
                         save_dir=str(tmp_path / "ck"), zero=zero)
    saved = optimizer(dtype, zero)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in buffers(saved).values():
            t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64) + 0.5)
    saved.num_steps = 7
    expected = {k: v.clone() for k, v in buffers(saved).items()}
    state.Checkpointer(config, saved, "data", 0, 1).save(3)

    fresh = optimizer(dtype, zero)
    for name, t in buffers(fresh).items():
        assert not torch.equal(t, expected[name]), name  # the load has something to change
    assert fresh.num_steps == 0
    step = state.Checkpointer(config, fresh, "data", 0, 1).restore(files.step_dir(config.save_dir, 3))
    assert step == 3 and fresh.num_steps == 7
    for name, t in buffers(fresh).items():
        assert torch.equal(t, expected[name]), name
    # The model reads the flat buffer: its parameters are the restored values.
    first = fresh.params[0]
    assert torch.equal(first.detach().reshape(-1), expected["param"][: first.numel()])
