"""Model shapes, shared by the cost model (planning, simulation) and the runtime model.

Presets are plain functions of no arguments; ``tiny`` is what the tests train.
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
    """Inner width of the SwiGLU MLP."""
    vocab_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def params_per_layer(self) -> int:
        h = self.hidden_size
        attn = h * (h + 2 * self.kv_dim) + h * h
        return attn + 3 * h * self.ffn_size + 2 * h

    @property
    def num_params(self) -> int:
        return self.num_layers * self.params_per_layer + 2 * self.vocab_size * self.hidden_size + self.hidden_size

    @property
    def linear_flops_per_token_layer(self) -> float:
        """Forward FLOPs of one layer's matmuls for one token (2 per multiply-add)."""
        return 2.0 * (self.params_per_layer - 2 * self.hidden_size)

    def attention_flops_fwd(self, seq_len: float) -> float:
        """Forward FLOPs of causal attention over one sequence (QK^T and PV, half masked)."""
        return 2.0 * self.hidden_size * seq_len * seq_len

    @property
    def work_coefficient(self) -> float:
        """docs/plan-format.md's ``a``: attention FLOPs per query-key pair over linear FLOPs per token."""
        h = self.hidden_size
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


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": tiny,
    "small": small,
    "llama-1b": llama_1b,
    "llama-7b": llama_7b,
    "llama-13b": llama_13b,
    "llama-30b": llama_30b,
    "llama-70b": llama_70b,
}
DEFAULT_MODEL = "llama-7b"


def get_model(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}") from None
