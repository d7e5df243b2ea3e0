"""LLaMA-style decoder (RMSNorm, RoPE, SwiGLU, GQA) over one micro-batch's packed token buffer.

The buffer holds several sequences (and ring pieces) back to back, so there is no batch dimension:
every tensor is [T, ...]. RoPE takes each token's *global* position within its own sequence (a ring
piece keeps the positions it has in the whole sequence), and every attention call goes through one
pluggable function, by default ``hdp_attention``, so the same weights run whole, split or on one
process without a mesh.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ContextManager, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from hdp.plan.model_config import ModelConfig


class AttentionFn(Protocol):
    """q [T, Hq, D], k/v [T, Hkv, D], the micro-batch's attention metadata -> out [T, Hq, D]."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Any) -> torch.Tensor: ...


LayerContext = Callable[[int], ContextManager[Any]]


def default_attention() -> AttentionFn:
    """HDP attention (local document-masked + ring); imported on use so the model stays importable alone."""
    from hdp.runtime.attention import hdp_attention

    return hdp_attention


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in at least float32: bf16 sums of squares lose the small components.
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [T, D/2] for int positions [T], computed in float64 so every layout rounds identically."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim))
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x [T, H, D] by the token's angle (interleaved LLaMA convention)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=False)
        self.wv = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=False)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: Any,
                attention: AttentionFn) -> torch.Tensor:
        t = x.shape[0]
        q = apply_rope(self.wq(x).view(t, self.num_heads, self.head_dim), cos, sin)      # [T, Hq, D]
        k = apply_rope(self.wk(x).view(t, self.num_kv_heads, self.head_dim), cos, sin)   # [T, Hkv, D]
        v = self.wv(x).view(t, self.num_kv_heads, self.head_dim)                         # [T, Hkv, D]
        out = attention(q, k, v, layout)                                                  # [T, Hq, D]
        return self.wo(out.reshape(t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=False)
        self.w3 = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=False)
        self.w2 = nn.Linear(cfg.ffn_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: Any,
                attention: AttentionFn) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, layout, attention)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    """Token ids [T] + positions [T] + attention metadata (built once per micro-batch) -> logits [T, vocab]."""

    def __init__(self, cfg: ModelConfig, attention: AttentionFn | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.attention = attention
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, layout: Any, *,
                layer_context: LayerContext | None = None) -> torch.Tensor:
        attention = self.attention if self.attention is not None else default_attention()
        x = self.embed(tokens)                                                  # [T, h]
        cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            # Layer i runs inside layer_context(i): the hook activation offloading uses to move
            # the activations saved for backward off the device.
            with layer_context(i) if layer_context is not None else contextlib.nullcontext():
                x = layer(x, cos, sin, layout, attention)
        return self.head(self.norm(x))                                          # [T, V]


def init_weights(model: Decoder, seed: int) -> None:
    """Deterministic init from ``seed`` alone (every rank gets identical weights without a broadcast)."""
    gen = torch.Generator().manual_seed(seed)
    std = 0.02
    out_std = std / math.sqrt(2 * model.cfg.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
                continue
            scale = out_std if name.endswith(("wo.weight", "w2.weight")) else std
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)


def build_model(cfg: ModelConfig, *, dtype: torch.dtype, device: torch.device, seed: int,
                attention: AttentionFn | None = None) -> Decoder:
    model = Decoder(cfg, attention)
    init_weights(model, seed)
    return model.to(device=device, dtype=dtype)
