"""The planner's model states under ``--tp``/``--pp`` are the runtime's: ``CostModel.model_state_bytes``
is the fullest (stage, TP index) of the decoder the runtime builds (norms whole on every TP rank, the
embedding on stage 0, the LM head on the last), measured here on the built shards and their optimizer;
and at tp = pp = 1 it is exactly the whole-model formula it always was (plan fingerprints rest on it)."""

from __future__ import annotations

import pytest
import torch

from hdp.plan import build_cost_model
from hdp.plan.cost.memory import rank_num_params, state_bytes
from hdp.plan.cost.model_config import PRESETS, get_model
from hdp.runtime.model.decoder import Decoder
from hdp.runtime.model.tensor_parallel import TensorParallel
from hdp.runtime.optim.zero import ShardedAdamW

PARALLEL = [(tp, pp) for tp in (1, 2) for pp in (1, 2)]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tp_pp_1_is_the_whole_model_formula(name):
    for dtype, zero, ranks in (("bfloat16", 1, 1024), ("bfloat16", 2, 7), ("float32", 0, 64), ("float64", 1, 3)):
        cost = build_cost_model(name, zero=zero, dtype=dtype)
        whole = state_bytes(cost.model.num_params, dtype=dtype, zero=zero, world_size=ranks).peak
        assert cost.model_state_bytes(ranks) == whole, (dtype, zero, ranks)


def _shard(cfg, tp: int, pp: int, stage: int, t: int, device: str = "meta") -> Decoder:
    with torch.device(device):
        return Decoder(cfg, tp=TensorParallel(tp, t) if tp > 1 else None, stage=(stage, pp))


@pytest.mark.parametrize("tp,pp", PARALLEL)
def test_cost_models_states_are_the_fullest_built_rank(tp, pp):
    cfg = get_model("tiny")
    for zero, ranks in ((0, 1), (1, 3), (2, 4)):
        cost = build_cost_model("tiny", tp=tp, pp=pp, zero=zero, dtype="float64")
        built = [sum(p.numel() for p in _shard(cfg, tp, pp, s, t).parameters()) for s in range(pp) for t in range(tp)]
        worst = max(state_bytes(n, dtype="float64", zero=zero, world_size=ranks).peak for n in built)
        assert cost.model_state_bytes(ranks) == worst, (zero, ranks)


@pytest.mark.parametrize("tp,pp", PARALLEL)
def test_measured_optimizer_state_bytes_equal_the_formula(tp, pp):
    """One process per (stage, TP index) shard, no process group: the optimizer's own byte count."""
    cfg = get_model("tiny")
    for s in range(pp):
        for t in range(tp):
            model = _shard(cfg, tp, pp, s, t, "cpu").to(torch.float64)
            opt = ShardedAdamW(model, lr=1e-3, zero=0)
            n = rank_num_params(cfg, tp, pp, s)
            assert opt.numel == n and opt.state_bytes() == state_bytes(n, dtype="float64", zero=0).total, (s, t)


def test_big_models_count_more_than_an_even_split():
    """70B at tp 8 pp 4: a stage holds 20 layers and a whole 32000 x 8192 embedding or LM head (1/8 of
    it per TP rank), more than 1/32 of the model; the capacity the planner derives drops accordingly."""
    cost = build_cost_model("llama-70b", tp=8, pp=4)
    even = state_bytes(-(-cost.model.num_params // 32), world_size=1024).peak
    assert cost.model_state_bytes(1024) > even
    m = cost.model
    edge = 20 * (m.params_per_layer - 2 * m.hidden_size) // 8 + 20 * 2 * m.hidden_size + m.vocab_size * m.hidden_size // 8
    assert rank_num_params(m, 8, 4, 0) == edge
