"""Bytes one rank holds: model states (parameters, gradients, optimizer) and activations per token.

One formula for the planner's derived capacity (``CostModel.derived_capacity``, over the fullest
stage and TP rank's ``rank_num_params``) and for the runtime,
whose sharded optimizer (``hdp.runtime.optim.zero``) allocates exactly these buffers; a test checks the
runtime's measured ``state_bytes`` against it. Pure Python: the planner never imports torch.

Layout (Megatron's distributed optimizer): all parameters live in one flat buffer of ``N`` elements,
padded to ``Np`` (a multiple of the world size when ``zero >= 1``); rank r owns the slice
``[r*S, (r+1)*S)`` with ``S = Np / world_size``.

* parameters, in the compute dtype, full on every rank (the forward needs them): ``Np * e``. A
  mixture of experts counts every expert (``ModelConfig.num_params``): each is trained, whichever
  tokens reach it, so each has its gradient and optimizer states.
* gradients, in the reduction dtype (fp32 for bf16), one full flat buffer: gradients of all of a
  step's micro-batches accumulate there before the one reduce-scatter, so it exists during every
  backward whatever ``zero`` is. ``zero 2`` keeps only the reduced shard (``S``) between steps.
* fp32 master weights (bf16 only; a pure dtype updates its parameters in place) and the two AdamW
  moments: ``S`` elements each with ``zero >= 1``, ``Np`` with ``zero 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hdp.plan.cost.model_config import ModelConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float64": 8}
ZERO_STAGES = (0, 1, 2)
RECOMPUTE = ("none", "full")
ACT_BYTES = 2
"""Saved activations are kept in bf16."""


@dataclass(frozen=True, slots=True)
class StateBytes:
    """Bytes of one rank's model states, by kind."""

    params: int
    """Compute-dtype parameters: every layer of the process's stage and TP shard (``rank_num_params``)."""
    grads: int
    """Gradient buffer held between steps."""
    grads_peak: int
    """Gradient buffer during backward (the full flat buffer, for every zero stage)."""
    master: int
    """fp32 master weights (0 unless the compute dtype is bf16)."""
    optimizer: int
    """AdamW first and second moments."""

    @property
    def total(self) -> int:
        """What the rank holds between steps (the runtime's ``state_bytes``)."""
        return self.params + self.grads + self.master + self.optimizer

    @property
    def peak(self) -> int:
        """What the rank holds during backward, beside the activations (what capacity must leave room for)."""
        return self.params + self.grads_peak + self.master + self.optimizer


def master_dtype(dtype: str) -> str:
    """bf16 trains with fp32 master weights, moments and gradient reduction; other dtypes stay pure."""
    return "float32" if dtype == "bfloat16" else dtype


def padded_numel(num_params: int, world_size: int, zero: int) -> int:
    """Elements of the flat buffers: padded to a multiple of the world size when sharded."""
    multiple = world_size if zero >= 1 else 1
    return -(-num_params // multiple) * multiple


def shard_numel(num_params: int, world_size: int, zero: int) -> int:
    """Elements of one rank's optimizer shard (the whole buffer with zero 0)."""
    n = padded_numel(num_params, world_size, zero)
    return n // world_size if zero >= 1 else n


def rank_num_params(model: ModelConfig, tp: int = 1, pp: int = 1, stage: int = 0) -> int:
    """Parameters one process holds (the runtime's flat buffer before padding): its stage's layers
    (``stage_layers``), the embedding on stage 0, final norm and LM head on the last; with ``tp``,
    every matrix split ``tp`` ways (heads, MLP columns, vocabulary rows:
    ``hdp.runtime.model.tensor_parallel``) and the norms (and a MoE router) whole on every TP rank."""
    if tp < 1 or (tp > 1 and (model.num_heads % tp or model.num_kv_heads % tp or model.ffn_size % tp
                              or model.vocab_size % tp)):
        raise ValueError(f"--tp {tp} does not divide model {model.name}'s heads, ffn and vocabulary")
    h = model.hidden_size
    replicated_per_layer = 2 * h + model.router_params_per_layer
    sharded_per_layer = model.params_per_layer - replicated_per_layer
    layers = len(stage_layers(model.num_layers, pp, stage))
    sharded, replicated = layers * sharded_per_layer, layers * replicated_per_layer
    if stage == 0:
        sharded += model.vocab_size * h
    if stage == pp - 1:
        sharded += model.vocab_size * h
        replicated += h
    return sharded // tp + replicated


def state_bytes(num_params: int, *, dtype: str = "bfloat16", zero: int = 1, world_size: int = 1) -> StateBytes:
    """Bytes per rank of parameters, gradients and optimizer states (module docstring for the layout)."""
    check_options(dtype, zero, world_size)
    compute, main = DTYPE_BYTES[dtype], DTYPE_BYTES[master_dtype(dtype)]
    full = padded_numel(num_params, world_size, zero)
    shard = shard_numel(num_params, world_size, zero)
    return StateBytes(
        params=full * compute,
        grads=(shard if zero == 2 else full) * main,
        grads_peak=full * main,
        master=shard * main if dtype == "bfloat16" else 0,
        optimizer=2 * shard * main,
    )


def check_options(dtype: str, zero: int, world_size: int) -> None:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    if zero not in ZERO_STAGES:
        raise ValueError(f"--zero must be 0, 1 or 2, got {zero!r}")
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")


def layer_activation_bytes_per_token(model: ModelConfig, tp: int = 1) -> float:
    """What one LLaMA layer saves for backward per token (flash attention, no s^2 term).

    Inputs of both norms and the residuals (4h), Q/K/V (h + 2 kv), attention output (h), gate, up,
    SiLU(gate) and their product (4 ffn); bf16, split tp ways. A mixture-of-experts layer saves, per
    token, each of its top_k routed copies' expert input (h, gathered) and the four ffn-wide tensors
    of that expert (split over the TP group's experts, like the dense MLP's columns), plus the
    router's probabilities (num_experts, on every member of the group).
    """
    if model.is_moe:
        routed = model.top_k * (model.hidden_size + 4 * model.ffn_size)
        return ACT_BYTES * ((6 * model.hidden_size + 2 * model.kv_dim + routed) / tp + model.num_experts)
    return ACT_BYTES * (6 * model.hidden_size + 2 * model.kv_dim + 4 * model.ffn_size) / tp


def activation_bytes_per_token(model: ModelConfig, layers: int, *, tp: int = 1, recompute: str = "none",
                               in_flight: int = 1) -> float:
    """Activation bytes per token of one micro-batch over a rank's ``layers``, ``in_flight`` micro-batches at once.

    ``none``: every layer keeps what it saves. ``full``: every layer keeps only its input (h values per
    token), and during the backward one layer at a time rebuilds its saved activations.
    """
    if recompute not in RECOMPUTE:
        raise ValueError(f"--recompute must be one of {', '.join(RECOMPUTE)}, got {recompute!r}")
    per_layer = layer_activation_bytes_per_token(model, tp)
    if recompute == "none":
        return in_flight * layers * per_layer
    return in_flight * layers * ACT_BYTES * model.hidden_size / tp + per_layer


def format_bytes(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """The layers pipeline stage ``stage`` of ``pp`` holds: contiguous, the first ``num_layers % pp``
    stages one more (so no stage holds more than ``ceil(num_layers / pp)``, the cost model's
    ``CostModel.layers``). Stage 0 also holds the embedding, the last stage the final norm and LM head."""
    if not 1 <= pp <= num_layers or not 0 <= stage < pp:
        raise ValueError(f"stage {stage} of --pp {pp}: pp must be in [1, {num_layers}] (the model's layers)")
    base, extra = divmod(num_layers, pp)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))
