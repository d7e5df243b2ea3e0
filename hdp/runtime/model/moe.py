"""Mixtral's sparse MLP: a router picks ``top_k`` of ``num_experts`` SwiGLU experts per token, dropless.

Parameter names and layouts are transformers' ``MixtralSparseMoeBlock`` (5.x, fused experts):
``gate.weight`` [E, h], ``experts.gate_up_proj`` [E, 2F, h] (gate rows, then up rows) and
``experts.down_proj`` [E, h, F], so a decoder with experts is a ``MixtralForCausalLM`` state dict
(``hdp.runtime.model.hf_export``) and is checked against transformers' own forward.

Routing is a per-token function: a token's experts and weights depend only on its own hidden
state, never on which other tokens share its micro-batch, so a document routes the same whole on
one rank or split over a ring. Every routed copy is computed (no capacity factor, nothing dropped):
the tokens are sorted by expert and each expert multiplies its contiguous rows (looped GEMMs, one
per expert that received tokens). Experts live inside the fixed TP group, never across HDP ranks
(docs/moe.md says why).

Each forward appends its routing to ``routing`` (when set by the decoder): the router logits
(autograd-connected, for the load-balancing loss and z-loss of ``hdp.runtime.train.aux_loss``) and
the chosen experts, as transformers' routers return them (``hf_model`` reads the same pair there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hdp.plan.cost.model_config import ModelConfig


@dataclass(frozen=True)
class Routing:
    """One MoE layer's routing of one micro-batch."""

    logits: torch.Tensor
    """[T, E] router logits in the model's dtype (the losses take their softmax in at least float32)."""
    experts: torch.Tensor
    """[T, k] chosen experts per token (int64)."""


class Router(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.top_k = cfg.top_k
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, h] -> (logits [T, E], top-k weights [T, k] renormalised to sum 1, top-k experts [T, k]).

        The softmax is taken in float32 whatever the model's dtype, exactly as transformers' Mixtral
        (also in a float64 model): the exported model is then the same function as the trained one.
        """
        logits = F.linear(x, self.weight)                                       # [T, E]
        top, experts = torch.topk(torch.softmax(logits.float(), dim=-1), self.top_k, dim=-1)  # [T, k]
        return logits, top / top.sum(dim=-1, keepdim=True), experts


class Experts(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_experts, self.ffn_size = cfg.num_experts, cfg.ffn_size
        self.gate_up_proj = nn.Parameter(torch.empty(cfg.num_experts, 2 * cfg.ffn_size, cfg.hidden_size))
        self.down_proj = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size, cfg.ffn_size))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """x [T, h], weights/experts [T, k] -> sum over a token's k experts of weight * SwiGLU_e(x) [T, h]."""
        t, k = experts.shape
        if t == 0:
            return x.clone()
        flat = experts.reshape(-1)                                              # [T*k]
        order = torch.argsort(flat, stable=True)                                # copies grouped by expert
        rows = torch.bincount(flat, minlength=self.num_experts).tolist()        # one host sync per layer
        xs = x[order // k]                                                      # [T*k, h]
        outs, a = [], 0
        for e, n in enumerate(rows):
            if n:
                gate, up = F.linear(xs[a:a + n], self.gate_up_proj[e]).chunk(2, dim=-1)   # [n, F] each
                outs.append(F.linear(F.silu(gate) * up, self.down_proj[e]))             # [n, h]
                a += n
        ys = torch.cat(outs) * weights.reshape(-1)[order, None].to(x.dtype)     # [T*k, h]
        # Back to (token, slot) order and summed over slots: deterministic on every device (no atomics),
        # and for k = 2 bit-equal to transformers' 0 + y_a + y_b.
        unsorted = torch.empty_like(ys).index_copy_(0, order, ys)
        return unsorted.view(t, k, -1).sum(dim=1)


class SparseMoE(nn.Module):
    """The MLP of a mixture-of-experts layer (transformers' ``MixtralSparseMoeBlock``, no jitter)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate = Router(cfg)
        self.experts = Experts(cfg)
        self.routing: list[Routing] | None = None
        """Set by the decoder for one forward; each call appends its ``Routing``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, weights, experts = self.gate(x)
        if self.routing is not None:
            self.routing.append(Routing(logits, experts))
        return self.experts(x, weights, experts)
