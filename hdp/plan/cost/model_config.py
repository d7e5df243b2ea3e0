"""Model shapes, shared by the cost model (planning, simulation) and the runtime model.

Presets are plain functions of no arguments; ``tiny`` is what the tests train (``tiny-moe`` for the
mixture-of-experts path). A config with ``num_experts > 0`` replaces every layer's MLP by Mixtral's
sparse block: a router (``num_experts x hidden_size``) and ``num_experts`` SwiGLU experts of width
``ffn_size`` each, of which every token uses ``top_k``. Dense configs (``num_experts == 0``) give
exactly the numbers they gave before experts existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A LLaMA-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention."""

    name: str
    hidden_size: int
    """Width of the residual stream (h)."""
    num_layers: int
    num_heads: int
    """Query heads; head_dim = hidden_size / num_heads."""
    num_kv_heads: int
    """Key/value heads (GQA when smaller than num_heads)."""
    ffn_size: int
    """Inner width of the SwiGLU MLP (of each expert when ``num_experts > 0``: Mixtral's intermediate_size)."""
    vocab_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    num_experts: int = 0
    """Routed experts per layer (Mixtral's num_local_experts); 0 is a dense model."""
    top_k: int = 0
    """Experts each token is routed to (num_experts_per_tok); 0 for a dense model."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if self.num_experts < 0 or not (self.top_k == 0 if self.num_experts == 0 else 1 <= self.top_k <= self.num_experts):
            raise ValueError(f"top_k {self.top_k} must be in [1, num_experts={self.num_experts}] "
                             "(both 0 for a dense model)")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def expert_ffn_size(self) -> int:
        """Inner width of one expert (0 for a dense model)."""
        return self.ffn_size if self.is_moe else 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def attn_params_per_layer(self) -> int:
        h = self.hidden_size
        return h * (h + 2 * self.kv_dim) + h * h

    @property
    def router_params_per_layer(self) -> int:
        return self.num_experts * self.hidden_size

    @property
    def params_per_layer(self) -> int:
        """Every parameter of a layer: all experts are held (and trained) whichever tokens they get."""
        mlp = 3 * self.hidden_size * self.ffn_size * max(self.num_experts, 1) + self.router_params_per_layer
        return self.attn_params_per_layer + mlp + 2 * self.hidden_size

    @property
    def active_params_per_layer(self) -> int:
        """Weights one token multiplies in a layer: attention, the router and its top_k experts (no norms)."""
        mlp = 3 * self.hidden_size * self.ffn_size * max(self.top_k, 1) + self.router_params_per_layer
        return self.attn_params_per_layer + mlp

    @property
    def num_params(self) -> int:
        return self.num_layers * self.params_per_layer + 2 * self.vocab_size * self.hidden_size + self.hidden_size

    @property
    def num_active_params(self) -> int:
        """Parameters one token uses (``num_params`` for a dense model): Mixtral-8x7B's ~13B of 47B."""
        unused = (self.num_experts - self.top_k) * 3 * self.hidden_size * self.ffn_size
        return self.num_params - self.num_layers * unused

    @property
    def linear_flops_per_token_layer(self) -> float:
        """Forward FLOPs of one layer's matmuls for one token (2 per multiply-add): the top_k routed
        experts and the router for a mixture of experts, never the experts a token does not visit."""
        return 2.0 * self.active_params_per_layer

    @property
    def expert_flops_per_token_layer(self) -> float:
        """The part of ``linear_flops_per_token_layer`` spent in experts' GEMMs (0 for a dense model)."""
        return 2.0 * 3 * self.hidden_size * self.ffn_size * self.top_k

    def attention_flops_fwd(self, seq_len: float) -> float:
        """Forward FLOPs of causal attention over one sequence (QK^T and PV, half masked)."""
        return 2.0 * self.hidden_size * seq_len * seq_len

    @property
    def work_coefficient(self) -> float:
        """docs/plan-format.md's ``a``: attention FLOPs per query-key pair over linear FLOPs per token."""
        h = self.hidden_size
        if self.is_moe:  # the linear work of the experts a token visits, and its router
            return 4 * h / (2 * (4 * h * h + 3 * h * self.ffn_size * self.top_k + self.router_params_per_layer))
        return 4 * h / (2 * (4 * h * h + 3 * h * self.ffn_size))


def tiny() -> ModelConfig:
    return ModelConfig("tiny", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_size=64, vocab_size=256)


def small() -> ModelConfig:
    return ModelConfig("small", hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, ffn_size=688, vocab_size=256)


def llama_1b() -> ModelConfig:
    """TinyLlama-1.1B's shapes: the ~1B model one GPU trains at 32K tokens (benchmarks/gpu_check.py)."""
    return ModelConfig("llama-1b", 2048, 22, 32, 4, 5632, 32000)


def llama_7b() -> ModelConfig:
    return ModelConfig("llama-7b", 4096, 32, 32, 32, 11008, 32000)


def llama_13b() -> ModelConfig:
    return ModelConfig("llama-13b", 5120, 40, 40, 40, 13824, 32000)


def llama_30b() -> ModelConfig:
    return ModelConfig("llama-30b", 6656, 60, 52, 52, 17920, 32000)


def llama_70b() -> ModelConfig:
    return ModelConfig("llama-70b", 8192, 80, 64, 8, 28672, 32000, rope_theta=500000.0)


def tiny_moe() -> ModelConfig:
    """``tiny`` with 4 experts of width 32, 2 per token: what the MoE tests train."""
    return ModelConfig("tiny-moe", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_size=32,
                       vocab_size=256, num_experts=4, top_k=2)


def mixtral_8x7b() -> ModelConfig:
    """mistralai/Mixtral-8x7B-v0.1: 46.7B parameters, 12.9B active per token."""
    return ModelConfig("mixtral-8x7b", 4096, 32, 32, 8, 14336, 32000, rope_theta=1e6, num_experts=8, top_k=2)


def mixtral_8x22b() -> ModelConfig:
    """mistralai/Mixtral-8x22B-v0.1: 140.6B parameters (ByteScale's 141B), 39.1B active per token."""
    return ModelConfig("mixtral-8x22b", 6144, 56, 48, 8, 16384, 32000, rope_theta=1e6, num_experts=8, top_k=2)


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": tiny,
    "small": small,
    "llama-1b": llama_1b,
    "llama-7b": llama_7b,
    "llama-13b": llama_13b,
    "llama-30b": llama_30b,
    "llama-70b": llama_70b,
    "tiny-moe": tiny_moe,
    "mixtral-8x7b": mixtral_8x7b,
    "mixtral-8x22b": mixtral_8x22b,
}
DEFAULT_MODEL = "llama-7b"


def get_model(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}") from None
