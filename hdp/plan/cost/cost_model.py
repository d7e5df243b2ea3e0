"""The cost model: time and activation memory of sequences on one HDP rank.

Per layer, a sequence of ``s`` tokens costs ``T(s) = attn(s) + linear(s) + c``: attention FLOPs
(quadratic) at the efficiency measured for documents of that length (short documents are slower per
FLOP: the penalty in the calibration), linear FLOPs at the measured GEMM rate, and a fixed per
micro-batch overhead ``c``. Activations are ``Act(s) = a2*s`` bytes per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hdp.plan.cost.device import DeviceProfile, load_profile
from hdp.plan.cost.memory import (activation_bytes_per_token, check_options, format_bytes,
                                  layer_activation_bytes_per_token, rank_num_params, state_bytes)
from hdp.plan.cost.model_config import ModelConfig, get_model

ATTN_FWD_SHARE = 1.0 / 3.5
"""Causal flash attention: backward costs 2.5x forward (the calibration's fwd vs fwd+bwd FLOPs)."""
LINEAR_FWD_SHARE = 1.0 / 3.0
"""Matmuls: backward is two matmuls for every forward one."""
from hdp.plan.cost.memory import ACT_BYTES  # noqa: E402,F401 - saved activations are bf16; kept importable from here
MEMO_ENTRIES = 2**20
"""At most this many ``seq_time`` results are kept per cost model (~100 MB)."""


@dataclass(frozen=True, slots=True)
class CostModel:
    """Times are seconds of forward+backward for the layers one HDP rank (or pipeline stage) holds."""

    model: ModelConfig
    device: DeviceProfile
    tp: int = 1
    """Tensor-parallel size of one HDP rank: FLOPs and activations are split tp ways."""
    pp: int = 1
    """Pipeline stages per HDP rank: each stage holds num_layers / pp layers."""
    zero: int = 1
    """ZeRO stage of the runtime's sharded optimizer (hdp.plan.cost.memory.state_bytes)."""
    recompute: str = "none"
    """``full``: every layer recomputes its forward in backward (an extra forward; only layer inputs kept)."""
    dtype: str = "bfloat16"
    """Training dtype: bf16 is mixed precision with fp32 gradients, master weights and moments."""
    _seq_times: dict = field(default_factory=dict, init=False, compare=False, hash=False, repr=False)
    """``seq_time`` by (length, ring size): the planner asks for the same pairs hundreds of
    thousands of times at 16K ranks (scheduler weights, estimates, bounds). Pure, so a memo."""
    _overheads: dict = field(default_factory=dict, init=False, compare=False, hash=False, repr=False)
    """``micro_batch_overhead`` by ring size (asked once per micro-batch and ring, as often)."""

    def __post_init__(self) -> None:
        if self.tp < 1 or self.pp < 1:
            raise ValueError("tp and pp must be >= 1")
        check_options(self.dtype, self.zero, 1)
        if self.recompute not in ("none", "full"):
            raise ValueError(f"--recompute must be none or full, got {self.recompute!r}")
        if self.pp > self.model.num_layers:
            raise ValueError(f"pp={self.pp} exceeds the model's {self.model.num_layers} layers")

    @property
    def layers(self) -> int:
        """Layers on one pipeline stage (all of them when pp == 1)."""
        return math.ceil(self.model.num_layers / self.pp)

    # -- time ----------------------------------------------------------------------------------------
    def attn_layer_time(self, seq_len: float, doc_len: float | None = None) -> float:
        """Fwd+bwd attention of one layer over a causal sequence; ``doc_len`` sets the efficiency."""
        flops = 3.5 * self.model.attention_flops_fwd(seq_len) / self.tp
        return flops / (self.device.attn_efficiency(doc_len or seq_len) * 1e12)

    def linear_layer_time(self, tokens: float) -> float:
        m = self.model
        if m.is_moe:
            # Each expert multiplies only the tokens routed to it: top_k * tokens / num_experts rows on
            # average, a smaller (slower per FLOP) GEMM than the attention projections' ``tokens`` rows.
            expert = 3.0 * m.expert_flops_per_token_layer * tokens / self.tp
            rows = max(tokens * m.top_k / m.num_experts, 1.0)
            dense = 3.0 * (m.linear_flops_per_token_layer - m.expert_flops_per_token_layer) * tokens / self.tp
            return (dense / self.device.gemm_efficiency(max(tokens, 1.0)) + expert / self.device.gemm_efficiency(rows)) / 1e12
        flops = 3.0 * m.linear_flops_per_token_layer * tokens / self.tp
        return flops / (self.device.gemm_efficiency(max(tokens, 1.0)) * 1e12)

    def seq_time(self, length: int, ring_size: int = 1) -> float:
        """Fwd+bwd time on one rank of its share of a sequence (all layers of the rank, no overhead).

        A ring member holds L/k tokens and does 1/k of the causal attention work (zig-zag), in
        blocks of L/(2k) tokens: the block size sets the attention efficiency.
        """
        key = (length, ring_size)
        t = self._seq_times.get(key)
        if t is None:
            if len(self._seq_times) >= MEMO_ENTRIES:  # a long training run sees new lengths every step
                self._seq_times.clear()
            k = ring_size
            attn = self.attn_layer_time(length, doc_len=length / (2 * k) if k > 1 else length) / k
            t = self._seq_times[key] = self.layers * self._recomputed(attn, self.linear_layer_time(length / k))
        return t

    def _recomputed(self, attn: float, linear: float) -> float:
        """fwd+bwd, plus the forward again when every layer is recomputed in backward."""
        if self.recompute == "full":
            return attn * (1 + ATTN_FWD_SHARE) + linear * (1 + LINEAR_FWD_SHARE)
        return attn + linear

    def micro_batch_overhead(self, ring_size: int = 1) -> float:
        """Fixed cost of one micro-batch: per layer one launch set, k block steps in a ring."""
        t = self._overheads.get(ring_size)
        if t is None:
            t = self._overheads[ring_size] = self.layers * self.device.layer_overhead_s * max(ring_size, 1)
        return t

    def layer_time_fwd(self, length: float) -> float:
        return ATTN_FWD_SHARE * self.attn_layer_time(length) + LINEAR_FWD_SHARE * self.linear_layer_time(length)

    # -- memory --------------------------------------------------------------------------------------
    @property
    def act_bytes_per_token_layer(self) -> float:
        """a2 of Act(s): saved activations of one LLaMA layer per token (flash attention, no s^2).

        Inputs of both norms and the residuals (4h), Q/K/V (h + 2 kv), attention output (h),
        gate, up, SiLU(gate) and their product (4 ffn); bf16, split tp ways.
        """
        return layer_activation_bytes_per_token(self.model, self.tp)

    def act_bytes(self, tokens: float) -> float:
        """Act(s) for one layer."""
        return self.act_bytes_per_token_layer * tokens

    def model_state_bytes(self, num_ranks: int) -> float:
        """Parameters, gradients and optimizer states the fullest process holds during backward (the
        runtime's flat buffers, ``hdp.plan.cost.memory.state_bytes(...).peak``, ZeRO over the
        ``num_ranks`` HDP ranks of its (stage, TP index)): the worst stage of the runtime's layout
        (``rank_num_params``: norms whole on every TP rank, the embedding on stage 0, the LM head on
        the last), not 1/(tp*pp) of the model, which under-counts both. Every TP rank of a stage
        holds the same count. ``num_params`` exactly when tp = pp = 1."""
        return max(state_bytes(rank_num_params(self.model, self.tp, self.pp, stage), dtype=self.dtype,
                               zero=self.zero, world_size=max(num_ranks, 1)).peak for stage in range(self.pp))

    def activation_bytes_per_token(self) -> float:
        """Activation bytes per token of capacity: all of a rank's layers, pp micro-batches in flight
        (1F1B's first stage), following ``recompute``."""
        return activation_bytes_per_token(self.model, self.layers, tp=self.tp, recompute=self.recompute,
                                          in_flight=self.pp)

    def usable_bytes(self, usable_fraction: float = 0.9) -> float:
        return usable_fraction * self.device.mem_total_gib * 2**30

    def derived_capacity(self, num_ranks: int, usable_fraction: float = 0.9) -> int:
        """Per-rank token capacity C: what device memory leaves after model states, over activations per token."""
        states = self.model_state_bytes(num_ranks)
        capacity = int((self.usable_bytes(usable_fraction) - states) // self.activation_bytes_per_token())
        if capacity < 1:
            raise ValueError(self._does_not_fit(states, None, usable_fraction))
        return capacity

    def check_fits(self, num_ranks: int, capacity: int, usable_fraction: float = 0.9) -> None:
        """Raise (one line, with the bytes) if ``capacity`` tokens per rank do not fit beside the model states."""
        states = self.model_state_bytes(num_ranks)
        if states + capacity * self.activation_bytes_per_token() > self.usable_bytes(usable_fraction):
            raise ValueError(self._does_not_fit(states, capacity, usable_fraction))

    def _does_not_fit(self, states: float, capacity: int | None, usable_fraction: float) -> str:
        acts = "" if capacity is None else (
            f" + {format_bytes(capacity * self.activation_bytes_per_token())} of activations for {capacity:,} tokens")
        hints = ("--zero 1, " if self.zero == 0 else "") + (
            "--recompute full, " if self.recompute == "none" and capacity is not None else "")
        return (f"{self.model.name} does not fit one {self.device.name}: it needs {format_bytes(states)} per rank for "
                f"parameters, gradients and optimizer states (--zero {self.zero}, {self.dtype}, tp={self.tp} "
                f"pp={self.pp}){acts}, but {format_bytes(self.usable_bytes(usable_fraction))} are usable "
                f"({usable_fraction:.0%} of {self.device.mem_total_gib:.1f} GiB): use {hints}tp/pp or a larger device")

    # -- offloading ----------------------------------------------------------------------------------
    def max_offload_ratio(self, length: float) -> float:
        """Largest r whose copies hide under the forward compute: T_fwd(s) >= r * Act(s) / B."""
        if self.recompute == "full":
            return 0.0  # recomputed layers keep only their input: offloading has nothing to move
        bandwidth = min(self.device.d2h_gbps, self.device.h2d_gbps) * 1e9
        return min(1.0, self.layer_time_fwd(length) * bandwidth / self.act_bytes(length))

    # -- the work measure of docs/plan-format.md -------------------------------------------------------
    @property
    def work_coefficient(self) -> float:
        return self.model.work_coefficient


def build_cost_model(model: str | ModelConfig = "llama-7b", device: str | DeviceProfile | None = None,
                     tp: int = 1, pp: int = 1, *, zero: int = 1, recompute: str = "none",
                     dtype: str = "bfloat16") -> CostModel:
    cfg = get_model(model) if isinstance(model, str) else model
    dev = device if isinstance(device, DeviceProfile) else load_profile(device)
    return CostModel(cfg, dev, tp=tp, pp=pp, zero=zero, recompute=recompute, dtype=dtype)
