"""The router losses against formulas written here (one process, float64, tiny-moe).

* document: for each document d alone, each layer l, ``E * sum_i f_i * P_i`` with f_i the share of
  d's tokens routed to expert i and P_i the mean router probability; mean over layers, documents
  weighted n_d / N. Value, every gradient, and the expert-load metric, packed into micro-batches.
* micro-batch: transformers' own ``load_balancing_loss_func`` on one micro-batch's router logits
  (to its float32 sums);
  cut in two micro-batches it differs (the documented dependence on the cut).
* A dense model refuses router flags in one line (exit 2).
"""

from __future__ import annotations

import random

import pytest
import torch

from hdp.data.batches import GlobalBatch, Slice
from hdp.data.corpus import BytesCorpus
from hdp.plan import get_model
from hdp.plan.types import MicroBatch, Plan, RankPlan, Segment, Sequence
from hdp.runtime.config import RouterSpec
from hdp.runtime.model.decoder import build_model
from hdp.runtime.train.aux_loss import RouterLoss
from hdp.runtime.train.inputs import rank_inputs
from tests.run_cli import run_main

CFG = get_model("tiny-moe")
LENGTHS = [23, 6, 9, 4, 14]
N = sum(LENGTHS)
CPU = torch.device("cpu")


def plan(packs) -> Plan:
    mbs = tuple(MicroBatch(tuple(Segment(i, 0, LENGTHS[i]) for i in p), (), 0.0, 64) for p in packs)
    return Plan("test", 1, 64, tuple(Sequence(i, n) for i, n in enumerate(LENGTHS)), (), (RankPlan(0, mbs),))


def batch() -> GlobalBatch:
    rng = random.Random(7)
    docs = tuple(bytes(rng.randrange(256) for _ in range(n)) for n in LENGTHS)
    return GlobalBatch(BytesCorpus(docs), tuple(Slice(i, 0, n) for i, n in enumerate(LENGTHS)))


def hdp_terms(model, spec: RouterSpec, packs) -> tuple[torch.Tensor, RouterLoss]:
    loss = RouterLoss(spec, CFG.num_experts, CFG.top_k)
    loss.begin(N, CFG.num_layers, CPU)
    total = torch.zeros((), dtype=torch.float64)
    for mb in rank_inputs(plan(packs), batch(), 0, CPU):
        model(mb.tokens, mb.positions, mb.attention)
        total = total + loss.term(model.routing, mb.attention.layout, mb.attention.rings)
    return total, loss


@pytest.mark.timeout(60)
def test_document_aux_and_z_loss_equal_the_formulas_with_gradients_and_load():
    model = build_model(CFG, dtype=torch.float64, device=CPU, seed=4)
    got, loss = hdp_terms(model, RouterSpec("document", 1.0, 0.5), [(0, 1, 2), (3, 4)])  # packed
    got.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    e, layers = CFG.num_experts, CFG.num_layers
    aux = z = torch.zeros((), dtype=torch.float64)
    load = torch.zeros(layers, e, dtype=torch.float64)
    for mb in rank_inputs(plan([(i,) for i in range(len(LENGTHS))]), batch(), 0, CPU):  # each document alone
        model(mb.tokens, mb.positions, mb.attention)
        n = mb.num_tokens
        doc = torch.zeros((), dtype=torch.float64)
        for l, r in enumerate(model.routing):
            probs = torch.softmax(r.logits, dim=-1)
            for i in range(e):
                f = sum(int(i in row) for row in r.experts.tolist()) / n
                doc = doc + e * f * probs[:, i].mean() / layers
                load[l, i] += f * n
            z = z + torch.logsumexp(r.logits, dim=-1).pow(2).sum() / (layers * N)
        aux = aux + doc * n / N
    (aux + 0.5 * z).backward()

    assert got.item() == pytest.approx((aux + 0.5 * z).item(), rel=1e-12)
    summed = [float(x) for x in loss.scalars()]
    assert summed[0] == pytest.approx(aux.item(), rel=1e-12) and summed[1] == pytest.approx(z.item(), rel=1e-12)
    assert 1.0 < aux.item() < CFG.top_k * 1.5  # k at perfect balance (transformers' scale)
    assert set(grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, g in grads.items():
        torch.testing.assert_close(g, model.get_parameter(name).grad, rtol=1e-10, atol=1e-14, msg=name)
    metrics = loss.metrics(summed)
    want = float((load.max(dim=1).values / load.mean(dim=1)).max())
    assert metrics["expert_load_max_over_mean"] == pytest.approx(want, rel=1e-12) and metrics["dropped_tokens"] == 0


@pytest.mark.timeout(60)
def test_micro_batch_aux_is_transformers_load_balancing_loss_and_depends_on_the_cut():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    model = build_model(CFG, dtype=torch.float64, device=CPU, seed=4)
    spec = RouterSpec("micro-batch", 1.0, 0.0)
    whole, _ = hdp_terms(model, spec, [tuple(range(len(LENGTHS)))])  # one micro-batch: T = N
    want = load_balancing_loss_func(tuple(r.logits for r in model.routing), CFG.num_experts, CFG.top_k)
    assert whole.item() == pytest.approx(want.item(), rel=1e-6)  # transformers sums in float32
    cut, _ = hdp_terms(model, spec, [(0, 1, 2), (3, 4)])
    assert abs(cut.item() - whole.item()) > 1e-6 * whole.item()
    doc_whole, _ = hdp_terms(model, RouterSpec("document", 1.0, 0.0), [tuple(range(len(LENGTHS)))])
    doc_cut, _ = hdp_terms(model, RouterSpec("document", 1.0, 0.0), [(0, 1, 2), (3, 4)])
    assert doc_cut.item() == pytest.approx(doc_whole.item(), rel=1e-12)


@pytest.mark.parametrize("flag", [("--aux-loss", "micro-batch"), ("--z-loss-coef", "0.1"), ("--aux-loss-coef", "0.1")])
def test_a_dense_model_refuses_router_flags_in_one_line(capsys, flag):
    code, _, err = run_main(capsys, "train", "--model", "tiny", "--nproc", "1", "--steps", "1", *flag)
    assert code == 2 and "model tiny is dense" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _moe_configs() -> dict:
    from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

    small = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return {
        "qwen2_moe-shared": (Qwen2MoeConfig(**small, shared_expert_intermediate_size=32),
                             "shared experts (shared_expert_intermediate_size 32) are not in hdp's cost model"),
        "mixtral-jitter": (MixtralConfig(**small, router_jitter_noise=0.1), "router_jitter_noise 0.1 makes routing random"),
        "qwen3_moe-dense-layers": (Qwen3MoeConfig(**small, mlp_only_layers=[0]), "dense layers among the MoE layers"),
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["qwen2_moe-shared", "mixtral-jitter", "qwen3_moe-dense-layers"])
def test_moe_configs_hdp_cannot_train_exactly_are_refused_in_one_line(case, tmp_path, capsys):
    pytest.importorskip("transformers")
    config, message = _moe_configs()[case]
    config.save_pretrained(tmp_path / case)
    code, _, err = run_main(capsys, "train", "--hf-model", str(tmp_path / case), "--steps", "1", "--nproc", "1")
    assert code == 2 and message in err and err.count("\n") == 1, err
