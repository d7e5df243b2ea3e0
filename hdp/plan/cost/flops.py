"""FLOPs of a training step, for honest MFU. Pure Python, no torch.

The model's real work on a packed batch is its linear FLOPs per token plus causal attention
*within each document*: a document of s tokens attends over its own s(s+1)/2 query-key pairs,
whatever else is packed beside it. torchtitan's formula (``6·N + 12·L·H·T`` per token, T the
configured sequence length) instead charges every token for full, unmasked attention over T, so a
batch of many short documents is credited with far more attention than it does. Both are here so
the difference can be shown (docs/observe.md); hdp reports the first.

Conventions: 2 FLOPs per multiply-add; backward costs twice the forward (model FLOPs: no
recomputation is counted, as in PaLM's MFU and nanoGPT's ``estimate_mfu``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hdp.plan.cost.model_config import ModelConfig

FWD_BWD = 3.0
"""Forward + backward = 3 x forward (backward: one matmul for the input grad, one for the weight grad)."""


@dataclass(frozen=True, slots=True)
class StepFlops:
    """Forward+backward FLOPs of one global batch, split by where they are spent."""

    linear: float
    """Every matmul with a weight: attention projections, MLP (a token's top_k experts and the router), and the output head."""
    attention: float
    """QK^T and PV over the causal pairs of each document."""

    @property
    def total(self) -> float:
        return self.linear + self.attention


def linear_flops_per_token(model: ModelConfig) -> float:
    """Forward+backward FLOPs of all weight matmuls for one token (layers and output head)."""
    fwd = model.num_layers * model.linear_flops_per_token_layer + 2.0 * model.vocab_size * model.hidden_size
    return FWD_BWD * fwd


def causal_attention_flops(model: ModelConfig, doc_len: int) -> float:
    """Forward+backward attention FLOPs of one document of ``doc_len`` tokens, all layers.

    Query i attends to keys 0..i: s(s+1)/2 pairs. Each pair costs head_dim multiply-adds in QK^T
    and again in PV for each of the query heads (GQA shares K/V, not the work), so the forward is
    2 matmuls x 2 FLOPs x hidden_size per pair.
    """
    pairs = doc_len * (doc_len + 1) / 2.0
    return FWD_BWD * model.num_layers * 4.0 * model.hidden_size * pairs


def batch_flops(model: ModelConfig, doc_lengths: Iterable[int]) -> StepFlops:
    """The model's real work on a batch of documents (each attends only within itself)."""
    lengths = list(doc_lengths)
    if any(s < 1 for s in lengths):
        raise ValueError("document lengths must be >= 1")
    return StepFlops(linear=linear_flops_per_token(model) * sum(lengths),
                     attention=sum(causal_attention_flops(model, s) for s in lengths))


def torchtitan_flops(model: ModelConfig, num_tokens: int, seq_len: int) -> float:
    """torchtitan's estimate for ``num_tokens`` tokens trained at sequence length ``seq_len``.

    ``get_nparams_and_flops``: ``6 * (params - embedding params) + 12 * layers * heads * head_dim *
    seq_len`` per token: full (not causal) attention over the configured length, whatever the
    documents are. A mixture of experts counts its active parameters (torchtitan's MoE models do).
    """
    non_embedding = model.num_active_params - model.vocab_size * model.hidden_size
    per_token = 6.0 * non_embedding + 12.0 * model.num_layers * model.hidden_size * seq_len
    return per_token * num_tokens


def tflops_per_device(flops: float, step_time_s: float, num_devices: int) -> float:
    """Achieved TFLOP/s of one device: a step's FLOPs shared by all devices over its wall time."""
    if step_time_s <= 0 or num_devices < 1:
        return 0.0
    return flops / step_time_s / num_devices / 1e12


def mfu(flops: float, step_time_s: float, num_devices: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved TFLOP/s per device over the device's peak."""
    return tflops_per_device(flops, step_time_s, num_devices) / peak_tflops if peak_tflops > 0 else 0.0
