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

from hdp.plan.cost.memory import stage_layers
from hdp.plan.cost.model_config import ModelConfig
from hdp.runtime.model.moe import Routing, SparseMoE
from hdp.runtime.model.tensor_parallel import (TensorParallel, copy_shard_chunk, full_shape, gather_parameters,
                                               gather_sequence, scatter_sequence, vocab_embedding)


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
    """GQA over this TP rank's heads (all of them with ``tp`` 1): q/k/v column-, o row-parallel."""

    def __init__(self, cfg: ModelConfig, tp: int = 1) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads // tp, cfg.num_kv_heads // tp, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: Any,
                attention: AttentionFn) -> torch.Tensor:
        t = x.shape[0]
        q = apply_rope(self.q_proj(x).view(t, self.num_heads, self.head_dim), cos, sin)      # [T, Hq, D]
        k = apply_rope(self.k_proj(x).view(t, self.num_kv_heads, self.head_dim), cos, sin)   # [T, Hkv, D]
        v = self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)                         # [T, Hkv, D]
        out = attention(q, k, v, layout)                                                      # [T, Hq, D]
        return self.o_proj(out.reshape(t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU over this TP rank's ``ffn / tp`` columns: gate/up column-, down row-parallel."""

    def __init__(self, cfg: ModelConfig, tp: int = 1) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.ffn_size // tp, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.ffn_size // tp, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_size // tp, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One layer. With ``tp``, ``x`` is this rank's rows of the residual stream (sequence parallel,
    ``hdp.runtime.model.tensor_parallel``): norm, all-gather the tokens, the sharded sublayer on all
    ``T`` = ``cos.shape[0]`` tokens, reduce-scatter its partial sums back onto the rows."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.tp = tp
        size = tp.size if tp is not None else 1
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = Attention(cfg, size)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = SparseMoE(cfg) if cfg.is_moe else MLP(cfg, size)  # Mixtral's layer when the config has experts

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: Any,
                attention: AttentionFn) -> torch.Tensor:
        tp = self.tp
        if tp is None:
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, layout, attention)
            return x + self.mlp(self.post_attention_layernorm(x))
        t = cos.shape[0]
        h = gather_sequence(self.input_layernorm(x), tp, t)                        # [T, h]
        x = x + scatter_sequence(self.self_attn(h, cos, sin, layout, attention), tp)  # [Tp/tp, h]
        h = gather_sequence(self.post_attention_layernorm(x), tp, t)
        return x + scatter_sequence(self.mlp(h), tp)


class Trunk(nn.Module):
    """Embedding, layers, final norm: HF's ``LlamaModel`` (the ``model.`` prefix of a checkpoint).

    A pipeline stage (``stage`` = (s, P)) holds only its layers (``stage_layers``), under the full
    model's names (``layers.{i}``), the embedding on stage 0 and the final norm on the last."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel | None = None, stage: tuple[int, int] = (0, 1)) -> None:
        super().__init__()
        size = tp.size if tp is not None else 1
        s, pp = stage
        self.embed_tokens = nn.Embedding(cfg.vocab_size // size, cfg.hidden_size) if s == 0 else None  # vocab-parallel rows
        self.layers = nn.ModuleList()
        for i in stage_layers(cfg.num_layers, pp, s):  # iteration follows insertion: the stage's layers in order
            self.layers.add_module(str(i), Block(cfg, tp))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps) if s == pp - 1 else None


class Decoder(nn.Module):
    """Token ids [T] + positions [T] + attention metadata (built once per micro-batch) -> logits [T, vocab].

    ``model.*`` and ``lm_head`` are named as in HF ``LlamaForCausalLM`` (untied embeddings). With
    ``tp`` (``--tp`` > 1) this rank holds its shards under the same names (``tensor_parallel``).
    """

    def __init__(self, cfg: ModelConfig, attention: AttentionFn | None = None, recompute: bool = False,
                 tp: TensorParallel | None = None, stage: tuple[int, int] = (0, 1)) -> None:
        super().__init__()
        self.cfg = cfg
        self.stage = stage  # (s, P): pipeline stage s of P (--pp); (0, 1) is the whole model
        self.tp = tp if tp is not None and tp.size > 1 else None
        size = self.tp.size if self.tp is not None else 1
        self.attention = attention
        self.recompute = recompute
        """Recompute each layer in backward (torch.utils.checkpoint, non-reentrant): a layer keeps only its input."""
        self.model = Trunk(cfg, self.tp, stage)
        last = stage[0] == stage[1] - 1
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size // size, bias=False) if last else None  # vocab-parallel rows
        self.routing: list[Routing] = []
        """Each MoE layer's routing in the last forward, in layer order (empty for a dense model)."""

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, layout: Any, *,
                layer_context: LayerContext | None = None, head: bool = True) -> torch.Tensor:
        """Logits [T, V]; with ``head=False`` the normed hidden states [T, h] the LM head would take
        (the train step's chunked loss applies ``lm_head.weight`` itself, hdp.runtime.train.loss).
        With ``tp`` the logits are this rank's vocabulary columns [T, V / tp]; the hidden states are whole.
        A pipeline stage after the first takes the previous stage's output [T, h] as ``tokens``; one
        before the last returns its last layer's output [T, h] (no norm, no head); with ``tp`` both are
        this rank's sequence shard [Tp/tp, h] (T is ``positions``' length)."""
        attention = self.attention if self.attention is not None else default_attention()
        self.routing = []
        if self.cfg.is_moe:  # a recomputed layer appends again in backward, after the loss has read these
            for layer in self.model.layers:
                layer.mlp.routing = self.routing
        tp = self.tp
        if self.model.embed_tokens is None:  # a later pipeline stage: its input is the activation
            x = tokens
        elif tp is None:
            x = self.model.embed_tokens(tokens)                                 # [T, h]
        else:  # each token's vector from the rank holding its row, onto this rank's rows [Tp/tp, h]
            x = scatter_sequence(vocab_embedding(tokens, self.model.embed_tokens.weight, tp), tp)
        cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in ((int(n), m) for n, m in self.model.layers.named_children()):  # i: in the whole model
            # Layer i runs inside layer_context(i): the hook activation offloading uses to move
            # the activations saved for backward off the device.
            with layer_context(i) if layer_context is not None else contextlib.nullcontext():
                if self.recompute and torch.is_grad_enabled():
                    x = checkpoint(layer, x, cos, sin, layout, attention, use_reentrant=False)
                else:
                    x = layer(x, cos, sin, layout, attention)
        if self.model.norm is None:  # a stage before the last: [T, h] to the next stage
            return x
        x = self.model.norm(x)                                                  # [T, h]
        if tp is not None:
            x = gather_sequence(x, tp, positions.shape[0])  # a later stage's tokens are its [Tp/tp, h] rows
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
    chunk, however big the model and whatever its device. A TP shard (``model.tp``) gets exactly its
    slice of the full parameter: the full tensor's stream is drawn and each rank keeps its part.
    A pipeline stage (``model.stage``) walks the whole model's parameters (a ``meta`` copy) and draws
    and discards the other stages' chunk by chunk, so its values equal the whole model's of the same
    name; the cost: every stage draws the whole model's stream (host time of the full init, no memory).
    """
    gen = torch.Generator().manual_seed(seed)
    std = 0.02
    out_std = std / math.sqrt(2 * model.cfg.num_layers)
    tp, rank = (model.tp.size, model.tp.rank) if model.tp is not None else (1, 0)
    own = dict(model.named_parameters())
    walk = own.items()
    if model.stage[1] > 1:
        with torch.device("meta"):
            walk = Decoder(model.cfg, tp=model.tp).named_parameters()  # the full model's names, in order
    with torch.no_grad():
        for name, p in walk:
            if name.endswith("norm.weight"):
                if name in own:
                    own[name].fill_(1.0)
                continue
            scale = out_std if name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj")) else std
            numel = math.prod(full_shape(name, tuple(p.shape), tp))
            for a, b in _chunks(numel, chunk or INIT_CHUNK):
                values = (torch.randn(b - a, generator=gen, dtype=torch.float64) * scale).to(torch.float32)
                if name in own:  # else another stage's: drawn, discarded
                    copy_shard_chunk(own[name], values, a, name, tp, rank)


def build_model(cfg: ModelConfig, *, dtype: torch.dtype, device: torch.device, seed: int,
                attention: AttentionFn | None = None, recompute: bool = False,
                tp: TensorParallel | None = None, stage: tuple[int, int] = (0, 1)) -> Decoder:
    """The decoder in ``dtype`` on ``device``: built on ``meta`` (no weights anywhere), storage allocated
    once on ``device``, then ``init_weights`` writes the seeded values there (``tp``: this rank's shards)."""
    with torch.device("meta"):
        model = Decoder(cfg, attention, recompute=recompute, tp=tp, stage=stage)
    model = model.to(dtype=dtype).to_empty(device=device)
    init_weights(model, seed)
    return model


def gather_model(model: Decoder) -> Decoder:
    """The single-process decoder (on the host) holding ``model``'s TP shards all-gathered: what
    ``--export-hf`` writes. Collective over the TP group; ``model`` itself when it is not sharded."""
    if model.tp is None:
        return model
    full = gather_parameters(list(model.named_parameters()), model.tp)
    with torch.device("meta"):
        whole = Decoder(model.cfg, stage=model.stage)  # --pp: this stage's layers, whole (pipeline.gather joins them)
    whole = whole.to(dtype=next(model.parameters()).dtype).to_empty(device=torch.device("cpu"))
    whole.load_state_dict({k: v.cpu() for k, v in full.items()})
    return whole
