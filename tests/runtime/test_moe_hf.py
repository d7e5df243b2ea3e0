"""The built-in decoder with experts is transformers' ``MixtralForCausalLM``: its state dict loads
strictly, and the cross-entropy loss and gradients on packed documents equal transformers' forward on
each document alone (float64; the tolerances of tests/runtime/test_hf_llama.py: transformers' RoPE
and RMSNorm carry float32 rounding, and both routers take their softmax in float32).
``--export-hf`` writes a directory ``AutoModelForCausalLM`` reloads as a Mixtral giving that loss.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, MixtralForCausalLM  # noqa: E402

from hdp.plan.cost.model_config import ModelConfig  # noqa: E402
from hdp.runtime.model.decoder import build_model  # noqa: E402
from hdp.runtime.model.hf_export import export_hf, mixtral_config  # noqa: E402
from tests.runtime.test_hf_llama import LENGTHS, LOSS_RTOL, assert_grads_close, hdp_loss_and_grads, hf_loss_and_grads  # noqa: E402

CFG = ModelConfig("hf-moe-test", hidden_size=48, num_layers=3, num_heads=6, num_kv_heads=2, ffn_size=40, vocab_size=97,
                  rope_theta=500.0, norm_eps=1e-6, num_experts=5, top_k=2)


def docs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, CFG.vocab_size, (n,), generator=gen) for n in LENGTHS]


def hf_twin(model) -> MixtralForCausalLM:
    config = mixtral_config(CFG, torch.float64)
    config._experts_implementation = "eager"  # transformers' looped experts: its grouped_mm has no float64
    hf = MixtralForCausalLM(config).to(torch.float64)
    hf.config._attn_implementation = "sdpa"
    hf.load_state_dict(model.state_dict(), strict=True)  # same names, same shapes, nothing missing
    return hf


@pytest.mark.timeout(60)
def test_builtin_moe_matches_transformers_mixtral_loss_and_gradients():
    model = build_model(CFG, dtype=torch.float64, device=torch.device("cpu"), seed=1)
    hf = hf_twin(model)
    batch = docs()
    loss, grads = hdp_loss_and_grads(model, batch)
    hf_loss, hf_grads = hf_loss_and_grads(hf, batch)
    assert loss == pytest.approx(hf_loss, rel=LOSS_RTOL)
    assert_grads_close(grads, hf_grads)
    # Every expert of every layer was used, so the comparison covers them all.
    used = torch.cat([r.experts.reshape(-1) for r in model.routing]).unique()
    assert len(model.routing) == CFG.num_layers and used.tolist() == list(range(CFG.num_experts))


@pytest.mark.timeout(60)
def test_the_comparison_catches_unnormalised_top_k_weights(monkeypatch):
    """Mutation check: Mixtral renormalises the top-k probabilities; skipping that must fail the comparison."""
    import hdp.runtime.model.moe as moe

    def raw(self, x):
        probs = torch.softmax(torch.nn.functional.linear(x, self.weight).float(), dim=-1)
        top, experts = torch.topk(probs, self.top_k, dim=-1)
        return probs, top, experts

    model = build_model(CFG, dtype=torch.float64, device=torch.device("cpu"), seed=1)
    hf = hf_twin(model)
    monkeypatch.setattr(moe.Router, "forward", raw)
    loss, _ = hdp_loss_and_grads(model, docs())
    hf_loss, _ = hf_loss_and_grads(hf, docs())
    assert abs(loss - hf_loss) > 1e3 * LOSS_RTOL * abs(hf_loss)


@pytest.mark.timeout(60)
def test_export_reloads_as_mixtral_with_the_same_loss(tmp_path):
    model = build_model(CFG, dtype=torch.float64, device=torch.device("cpu"), seed=2)
    out = export_hf(model, str(tmp_path / "export"))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_local_experts"] == 5 and config["num_experts_per_tok"] == 2
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float64, experts_implementation="eager")
    assert isinstance(hf, MixtralForCausalLM)
    loaded = hf.state_dict()
    for name, t in model.state_dict().items():
        assert torch.equal(loaded[name], t), name
    loss, _ = hdp_loss_and_grads(model, docs())
    hf_loss, _ = hf_loss_and_grads(hf, docs())
    assert loss == pytest.approx(hf_loss, rel=LOSS_RTOL)
