"""The built-in decoder is HF ``LlamaForCausalLM``: same weights (its state dict loads strictly), same
loss and gradients on a batch of packed documents, checked against transformers' own forward.

hdp runs the documents packed in one buffer (document-masked attention); transformers runs each
document as its own sequence. Both in float64. Tolerance: transformers computes the RoPE angles and
RMSNorm in float32 even in a float64 model, so its results carry float32 rounding. Measured here:
loss 8.5e-11 relative; gradients 2.4e-7 of each tensor's largest entry (single entries near zero
differ more, relatively). The test allows 1e-9 on the loss and 2e-6 of each gradient tensor's largest
entry. Adjacent-pair RoPE, a flipped sign or an RMSNorm over the sum move the loss by far more
(the mutation test below checks the first).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
from transformers import LlamaForCausalLM  # noqa: E402

from hdp.plan.cost.model_config import ModelConfig  # noqa: E402
from hdp.runtime.model.hf_export import llama_config  # noqa: E402
from hdp.runtime.attention.dispatch import MicroBatchAttention  # noqa: E402
from hdp.runtime.attention.layout import AttentionLayout, Span  # noqa: E402
from hdp.runtime.model.decoder import build_model  # noqa: E402

CFG = ModelConfig("hf-test", hidden_size=48, num_layers=3, num_heads=6, num_kv_heads=2, ffn_size=80, vocab_size=97,
                  rope_theta=500.0, norm_eps=1e-6)
LENGTHS = [17, 5, 30, 1, 11]
LOSS_RTOL = 1e-9
GRAD_RTOL = 2e-6  # of the tensor's largest |entry|


def docs() -> list[torch.Tensor]:
    rng = random.Random(3)
    return [torch.tensor([rng.randrange(CFG.vocab_size) for _ in range(n)]) for n in LENGTHS]


def packed_layout(lengths: list[int]) -> MicroBatchAttention:
    spans, row = [], 0
    for i, n in enumerate(lengths):
        spans.append(Span(i, row, row + n, 0))
        row += n
    return MicroBatchAttention(AttentionLayout(0, 0, row, tuple(spans), tuple(spans), ()))


def hdp_loss_and_grads(model, batch: list[torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    tokens = torch.cat(batch)
    positions = torch.cat([torch.arange(len(d)) for d in batch])
    labels = torch.cat([torch.cat([d[1:], torch.tensor([-100])]) for d in batch])
    logits = model(tokens, positions, packed_layout([len(d) for d in batch]))
    loss = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum") / sum(len(d) - 1 for d in batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


def hf_loss_and_grads(hf, batch: list[torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    total = torch.zeros((), dtype=torch.float64)
    for d in batch:  # each document alone: transformers' own causal attention, positions from 0
        logits = hf(input_ids=d[None]).logits[0]
        total = total + F.cross_entropy(logits[:-1], d[1:], reduction="sum")
    loss = total / sum(len(d) - 1 for d in batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in hf.named_parameters()}


def assert_grads_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rtol: float = GRAD_RTOL) -> None:
    """Every tensor within ``rtol`` of its own largest entry (float32 noise is relative to the scale)."""
    assert set(got) == set(want), set(got) ^ set(want)
    for name, g in got.items():
        w = want[name]
        assert g.shape == w.shape, name
        err = float((g - w).abs().max() / w.abs().max().clamp_min(1e-300))
        assert err <= rtol, f"gradient {name}: max error {err:.2e} of its largest entry (allowed {rtol:.0e})"


def hf_twin(model) -> LlamaForCausalLM:
    hf = LlamaForCausalLM(llama_config(CFG, torch.float64)).to(torch.float64)
    hf.config._attn_implementation = "sdpa"
    hf.load_state_dict(model.state_dict(), strict=True)  # same names, same shapes, nothing missing
    return hf


@pytest.mark.timeout(60)
def test_builtin_decoder_matches_transformers_llama_loss_and_gradients():
    model = build_model(CFG, dtype=torch.float64, device=torch.device("cpu"), seed=1)
    hf = hf_twin(model)
    batch = docs()
    loss, grads = hdp_loss_and_grads(model, batch)
    hf_loss, hf_grads = hf_loss_and_grads(hf, batch)
    assert loss == pytest.approx(hf_loss, rel=LOSS_RTOL)
    assert_grads_close(grads, hf_grads)


@pytest.mark.timeout(60)
def test_the_comparison_catches_an_interleaved_rope(monkeypatch):
    """Mutation check: the Meta (adjacent pairs) RoPE layout must fail the comparison above."""
    import hdp.runtime.model.decoder as m

    def interleaved(x, cos, sin):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)

    model = build_model(CFG, dtype=torch.float64, device=torch.device("cpu"), seed=1)
    hf = hf_twin(model)
    monkeypatch.setattr(m, "apply_rope", interleaved)
    batch = docs()
    loss, _ = hdp_loss_and_grads(model, batch)
    hf_loss, _ = hf_loss_and_grads(hf, batch)
    assert abs(loss - hf_loss) > 1e3 * LOSS_RTOL * abs(hf_loss)
