"""``--hf-model`` mixture-of-experts families under HDP: tiny random Mixtral and Qwen3-MoE configs,
transformers' own modelling code (routers hooked, nothing patched), one step in float64 on 3 ranks
(two rings of 3, whole documents beside them, uneven micro-batch counts) equal 1 rank with every
document whole: loss, document balance loss, z-loss, expert load, gradient norm (1e-9) and every
gradient. The router statistics are the HF routers' own (logits and chosen experts)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("transformers")
from transformers import MixtralConfig, Qwen3MoeConfig  # noqa: E402

from hdp.runtime.config import RouterSpec  # noqa: E402
from hdp.runtime.model.hf_model import build_hf_model  # noqa: E402
from hdp.runtime.train.step import build_optimizer, train_step  # noqa: E402
from tests.runtime.test_hf_llama import assert_grads_close  # noqa: E402
from tests.runtime.test_hf_model import COMMON, SEED, batch, one_rank_plan, three_rank_plan  # noqa: E402
from tests.runtime.test_train_step import free_port  # noqa: E402

pytestmark = pytest.mark.dist
SPEC = RouterSpec("document", 0.05, 0.01)
ROUTER_KEYS = ("aux_loss", "z_loss", "expert_load_max_over_mean")
MOE = dict(COMMON, intermediate_size=24, num_experts_per_tok=2, tie_word_embeddings=False)


def configs() -> dict:
    return {
        "mixtral": MixtralConfig(**MOE, num_local_experts=4, sliding_window=None),
        "qwen3_moe": Qwen3MoeConfig(**MOE, moe_intermediate_size=20, num_experts=4, head_dim=16, norm_topk_prob=True),
    }


def hdp_step(config, plan, rank: int) -> dict:
    model = build_hf_model(config, dtype=torch.float64, device=torch.device("cpu"), seed=SEED)
    model.router_spec = SPEC  # as build_train_model sets it from the flags
    opt = build_optimizer(model, 1e-3, zero=0)
    res = train_step(model, opt, plan, batch(), rank=rank, group=None, device=torch.device("cpu"), timeout_s=30)
    grads = {e.name: opt.grad_shard[e.offset:e.offset + e.numel].view(e.shape).clone() for e in opt.layout}
    return {"loss": res.loss, "grad_norm": res.grad_norm, "router": res.router, "grads": grads,
            "layers": len(model.routing)}


def _rank(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=3)
    out = {name: hdp_step(cfg, three_rank_plan(), rank) for name, cfg in configs().items()}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_hf_moe_models_on_3_ranks_with_rings_equal_1_rank(tmp_path):
    mp.start_processes(_rank, args=(free_port(), str(tmp_path)), nprocs=3, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(3)]
    for name, cfg in configs().items():
        one = hdp_step(cfg, one_rank_plan(), 0)
        assert one["layers"] == cfg.num_hidden_layers and one["router"]["dropped_tokens"] == 0
        for r, got in enumerate(ranks):
            got = got[name]
            assert got["loss"] == pytest.approx(one["loss"], rel=1e-9), f"{name} rank {r}"
            assert got["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-9), f"{name} rank {r}"
            for key in ROUTER_KEYS:
                assert got["router"][key] == pytest.approx(one["router"][key], rel=1e-9), f"{name} rank {r} {key}"
            assert_grads_close(got["grads"], one["grads"], rtol=1e-9)
