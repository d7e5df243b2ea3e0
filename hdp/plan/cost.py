"""The cost model: time and activation memory of sequences on one HDP rank.

Per layer, a sequence of ``s`` tokens costs ``T(s) = attn(s) + linear(s) + c``: attention FLOPs
(quadratic) at the efficiency measured for documents of that length (short documents are slower per
FLOP: the penalty in the calibration), linear FLOPs at the measured GEMM rate, and a fixed per
micro-batch overhead ``c``. Activations are ``Act(s) = a2*s`` bytes per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hdp.plan.device import DeviceProfile, load_profile
from hdp.plan.model_config import ModelConfig, get_model

ATTN_FWD_SHARE = 1.0 / 3.5
"""Causal flash attention: backward costs 2.5x forward (the calibration's fwd vs fwd+bwd FLOPs)."""
LINEAR_FWD_SHARE = 1.0 / 3.0
"""Matmuls: backward is two matmuls for every forward one."""
ACT_BYTES = 2
"""Saved activations are kept in bf16."""


@dataclass(frozen=True, slots=True)
class CostModel:
    """Times are seconds of forward+backward for the layers one HDP rank (or pipeline stage) holds."""

    model: ModelConfig
    device: DeviceProfile
    tp: int = 1
    """Tensor-parallel size of one HDP rank: FLOPs and activations are split tp ways."""
    pp: int = 1
    """Pipeline stages per HDP rank: each stage holds num_layers / pp layers."""

    def __post_init__(self) -> None:
        if self.tp < 1 or self.pp < 1:
            raise ValueError("tp and pp must be >= 1")
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
        flops = 3.0 * self.model.linear_flops_per_token_layer * tokens / self.tp
        return flops / (self.device.gemm_efficiency(max(tokens, 1.0)) * 1e12)

    def seq_time(self, length: int, ring_size: int = 1) -> float:
        """Fwd+bwd time on one rank of its share of a sequence (all layers of the rank, no overhead).

        A ring member holds L/k tokens and does 1/k of the causal attention work (zig-zag), in
        blocks of L/(2k) tokens: the block size sets the attention efficiency.
        """
        k = ring_size
        attn = self.attn_layer_time(length, doc_len=length / (2 * k) if k > 1 else length) / k
        return self.layers * (attn + self.linear_layer_time(length / k))

    def micro_batch_overhead(self, ring_size: int = 1) -> float:
        """Fixed cost of one micro-batch: per layer one launch set, k block steps in a ring."""
        return self.layers * self.device.layer_overhead_s * max(ring_size, 1)

    def layer_time_fwd(self, length: float) -> float:
        return ATTN_FWD_SHARE * self.attn_layer_time(length) + LINEAR_FWD_SHARE * self.linear_layer_time(length)

    # -- memory --------------------------------------------------------------------------------------
    @property
    def act_bytes_per_token_layer(self) -> float:
        """a2 of Act(s): saved activations of one LLaMA layer per token (flash attention, no s^2).

        Inputs of both norms and the residuals (4h), Q/K/V (h + 2 kv), attention output (h),
        gate, up, SiLU(gate) and their product (4 ffn); bf16, split tp ways.
        """
        m = self.model
        return ACT_BYTES * (6 * m.hidden_size + 2 * m.kv_dim + 4 * m.ffn_size) / self.tp

    def act_bytes(self, tokens: float) -> float:
        """Act(s) for one layer."""
        return self.act_bytes_per_token_layer * tokens

    def model_state_bytes(self, num_ranks: int) -> float:
        """bf16 weights and grads per rank, fp32 master weights and Adam moments sharded (ZeRO-1)."""
        params = self.model.num_params / (self.tp * self.pp)
        return params * (2 + 2) + params * 12 / max(num_ranks, 1)

    def derived_capacity(self, num_ranks: int, usable_fraction: float = 0.9) -> int:
        """Per-rank token capacity C from device memory, model states and Act(s) of every layer.

        With pp stages, 1F1B keeps up to pp micro-batches in flight on the first stage, so its
        layers hold pp micro-batches' activations at once.
        """
        budget = usable_fraction * self.device.mem_total_gib * 2**30 - self.model_state_bytes(num_ranks)
        capacity = int(budget // (self.pp * self.layers * self.act_bytes_per_token_layer))
        if capacity < 1:
            raise ValueError(
                f"{self.model.name} does not fit one {self.device.name} with tp={self.tp} pp={self.pp}: "
                "raise tp/pp or use a larger device"
            )
        return capacity

    # -- offloading ----------------------------------------------------------------------------------
    def max_offload_ratio(self, length: float) -> float:
        """Largest r whose copies hide under the forward compute: T_fwd(s) >= r * Act(s) / B."""
        bandwidth = min(self.device.d2h_gbps, self.device.h2d_gbps) * 1e9
        return min(1.0, self.layer_time_fwd(length) * bandwidth / self.act_bytes(length))

    # -- the work measure of docs/plan-format.md -------------------------------------------------------
    @property
    def work_coefficient(self) -> float:
        return self.model.work_coefficient


def build_cost_model(model: str | ModelConfig = "llama-7b", device: str | DeviceProfile | None = None,
                     tp: int = 1, pp: int = 1) -> CostModel:
    cfg = get_model(model) if isinstance(model, str) else model
    dev = device if isinstance(device, DeviceProfile) else load_profile(device)
    return CostModel(cfg, dev, tp=tp, pp=pp)
