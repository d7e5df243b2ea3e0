"""A tiny LLaMA-shaped layer stack for the offload tests (the real model lives in hdp.runtime.model.decoder).

RMSNorm, q/k/v/o projections with RoPE and causal softmax attention written out in matmuls, SwiGLU.
Its forward takes the same ``layer_context`` hook as the runtime model: layer i runs inside it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, ContextManager

import torch
from torch import nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from hdp.runtime.offload.activations import ActivationOffloader


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rope(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """x: [b, heads, s, d] rotated by position (global positions 0..s-1)."""
    b, nh, s, d = x.shape
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=x.dtype, device=x.device) / d)
    ang = torch.arange(s, dtype=x.dtype, device=x.device)[:, None] * inv[None, :]  # [s, d/2]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm, self.mlp_norm = RMSNorm(dim), RMSNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(dim, ffn, bias=False), nn.Linear(dim, ffn, bias=False)
        self.down = nn.Linear(ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, dim = x.shape
        h = self.attn_norm(x)
        q, k, v = (proj(h).view(b, s, self.heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        q, k = rope(q), rope(k)
        scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5  # [b, heads, s, s]
        mask = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        attn = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v  # [b, heads, s, d]
        x = x + self.o(attn.transpose(1, 2).reshape(b, s, dim))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class TinyLlama(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 32, heads: int = 4, ffn: int = 80, num_layers: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Layer(dim, heads, ffn) for _ in range(num_layers))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor,
                layer_context: Callable[[int], ContextManager[None]] | None = None) -> torch.Tensor:
        x = self.embed(tokens)
        for i, layer in enumerate(self.layers):
            with layer_context(i) if layer_context is not None else contextlib.nullcontext():
                x = layer(x)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")


def forward_backward(model: TinyLlama, tokens: torch.Tensor, labels: torch.Tensor, off: ActivationOffloader | None,
                     layers: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One micro-batch's forward and backward, offloading ``layers`` layers; (loss, gradients)."""
    model.zero_grad(set_to_none=True)
    with off.micro_batch(layers) if off is not None else contextlib.nullcontext() as ctx:
        loss = model(tokens, labels, layer_context=ctx)
        loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]
