"""LLaMA-style decoder (RMSNorm, RoPE, SwiGLU, GQA) over one micro-batch's packed token buffer.

The buffer holds several sequences (and ring pieces) back to back, so there is no batch dimension:
every tensor is [T, ...]. Parameter names and the RoPE layout (rotate halves) are Hugging Face
``LlamaForCausalLM``'s, so ``state_dict()`` is a valid Llama checkpoint (``hdp.runtime.model.hf_export``)
and ``tests/runtime/test_hf_llama.py`` checks loss and gradients against transformers itself. RoPE takes each token's *global* position within its own sequence (a ring
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
from torch.utils.checkpoint import checkpoint

from hdp.plan.cost.model_config import ModelConfig
from hdp.runtime.model.moe import Routing, SparseMoE


class AttentionFn(Protocol):
    """q [T, Hq, D], k/v [T, Hkv, D], the micro-batch's attention metadata -> out [T, Hq, D]."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Any) -> torch.Tensor: ...


LayerContext = Callable[[int], ContextManager[Any]]


def default_attention() -> AttentionFn:
    """HDP attention (local document-masked + ring); imported on use so the model stays importable alone."""
    from hdp.runtime.attention.dispatch import hdp_attention

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
    """cos/sin [T, D/2] for int positions [T], computed in float64 so every layout rounds identically.

    Frequency i (of D/2) rotates dimensions i and i + D/2 (``apply_rope``).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim))
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) of x [T, H, D] by the token's angle i (HF "rotate half" layout).

    Meta's original LLaMA rotates adjacent pairs (x[2i], x[2i+1]); HF checkpoints permute the q/k rows
    so that halves are rotated instead. Using HF's layout makes our weights load into transformers as is.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: Any,
                attention: AttentionFn) -> torch.Tensor:
        t = x.shape[0]
        q = apply_rope(self.q_proj(x).view(t, self.num_heads, self.head_dim), cos, sin)      # [T, Hq, D]
        k = apply_rope(self.k_proj(x).view(t, self.num_kv_heads, self.head_dim), cos, sin)   # [T, Hkv, D]
        v = self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)                         # [T, Hkv, D]
        out = attention(q, k, v, layout)                                                      # [T, Hq, D]
        return self.o_proj(out.reshape(t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = SparseMoE(cfg) if cfg.is_moe else MLP(cfg)  # Mixtral's layer when the config has experts

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: Any,
                attention: AttentionFn) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layout, attention)
        return x + self.mlp(self.post_attention_layernorm(x))


class Trunk(nn.Module):
    """Embedding, layers, final norm: HF's ``LlamaModel`` (the ``model.`` prefix of a checkpoint)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)


class Decoder(nn.Module):
    """Token ids [T] + positions [T] + attention metadata (built once per micro-batch) -> logits [T, vocab].

    ``model.*`` and ``lm_head`` are named as in HF ``LlamaForCausalLM`` (untied embeddings).
    """

    def __init__(self, cfg: ModelConfig, attention: AttentionFn | None = None, recompute: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.attention = attention
        self.recompute = recompute
        """Recompute each layer in backward (torch.utils.checkpoint, non-reentrant): a layer keeps only its input."""
        self.model = Trunk(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.routing: list[Routing] = []
        """Each MoE layer's routing in the last forward, in layer order (empty for a dense model)."""

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, layout: Any, *,
                layer_context: LayerContext | None = None, head: bool = True) -> torch.Tensor:
        """Logits [T, V]; with ``head=False`` the normed hidden states [T, h] the LM head would take
        (the train step's chunked loss applies ``lm_head.weight`` itself, hdp.runtime.train.loss)."""
        attention = self.attention if self.attention is not None else default_attention()
        self.routing = []
        if self.cfg.is_moe:  # a recomputed layer appends again in backward, after the loss has read these
            for layer in self.model.layers:
                layer.mlp.routing = self.routing
        x = self.model.embed_tokens(tokens)                                     # [T, h]
        cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.model.layers):
            # Layer i runs inside layer_context(i): the hook activation offloading uses to move
            # the activations saved for backward off the device.
            with layer_context(i) if layer_context is not None else contextlib.nullcontext():
                if self.recompute and torch.is_grad_enabled():
                    x = checkpoint(layer, x, cos, sin, layout, attention, use_reentrant=False)
                else:
                    x = layer(x, cos, sin, layout, attention)
        x = self.model.norm(x)                                                  # [T, h]
        return self.lm_head(x) if head else x                                   # [T, V]


INIT_CHUNK = 1 << 22
"""Elements drawn on the host at a time by ``init_weights`` (32 MiB of float64), whatever the model's size."""


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[0, n) in pieces of ``size`` (a multiple of 16) and a last one of 17 to size + 16 elements, or one piece.

    torch's CPU normal sampler fills blocks of 16 (redrawing the last 16 of a length that is not a
    multiple of 16; lengths under 16 take another path), so draws of these pieces give exactly the
    values, and leave the generator exactly where, one draw of all n would.
    """
    assert size % 16 == 0 and size > 0
    bounds, a = [], 0
    while n - a > size + 16:
        bounds.append((a, a + size))
        a += size
    return bounds + [(a, n)]


def init_weights(model: Decoder, seed: int, chunk: int | None = None) -> None:
    """Deterministic init from ``seed`` alone (every rank gets identical weights without a broadcast).

    One CPU generator's float64 normal stream, scaled, rounded to float32, then to the parameter's
    dtype, written into the parameters wherever they live: the values (bit for bit) of the original
    init, which drew each tensor whole on the CPU and built the model in float32 before moving it.
    Drawn ``chunk`` elements at a time (default ``INIT_CHUNK``), so the host never holds more than one
    chunk, however big the model and whatever its device.
    """
    gen = torch.Generator().manual_seed(seed)
    std = 0.02
    out_std = std / math.sqrt(2 * model.cfg.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
                continue
            scale = out_std if name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj")) else std
            flat = p.view(-1)
            for a, b in _chunks(p.numel(), chunk or INIT_CHUNK):
                flat[a:b].copy_((torch.randn(b - a, generator=gen, dtype=torch.float64) * scale).to(torch.float32))


def build_model(cfg: ModelConfig, *, dtype: torch.dtype, device: torch.device, seed: int,
                attention: AttentionFn | None = None, recompute: bool = False) -> Decoder:
    """The decoder in ``dtype`` on ``device``: built on ``meta`` (no weights anywhere), storage allocated
    once on ``device``, then ``init_weights`` writes the seeded values there."""
    with torch.device("meta"):
        model = Decoder(cfg, attention, recompute=recompute)
    model = model.to(dtype=dtype).to_empty(device=device)
    init_weights(model, seed)
    return model
