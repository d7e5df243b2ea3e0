"""The model reduced to what communicates: the real parameters, attention calls only.

At 1,024 ranks a fake forward and backward of every layer's projections and MLP would take
minutes and communicate nothing. The skeleton keeps the real model's parameters (so the
optimizer's flat buffers, reduce-scatter and all-gather have their real sizes) and, per layer,
the one call that communicates: ``attention(q, k, v, layout)`` on tensors of the layer's real
shapes ([T, Hq, D], [T, Hkv, D]) taken from the residual stream, so autograd runs every ring
backward. A test checks that it issues the same ops as the full model.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import torch
from torch import nn

from hdp.runtime.model.decoder import default_attention


class AttentionSkeleton(nn.Module):
    """``decoder``'s parameters; forward: embedding, ``layers`` attention calls, head (logits [T, V])."""

    def __init__(self, decoder: nn.Module, layers: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.cfg = decoder.cfg
        self.layers = layers

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, layout: Any, *,
                layer_context: Any = None) -> torch.Tensor:
        cfg, d = self.cfg, self.decoder
        attention = d.attention if d.attention is not None else default_attention()
        x = d.model.embed_tokens(tokens)  # [T, h]
        t = x.shape[0]
        for i in range(self.layers):
            with layer_context(i) if layer_context is not None else contextlib.nullcontext():
                q = x.view(t, cfg.num_heads, cfg.head_dim)
                kv = x[:, :cfg.kv_dim].reshape(t, cfg.num_kv_heads, cfg.head_dim)
                x = x + attention(q, kv, kv, layout).reshape(t, cfg.num_heads * cfg.head_dim)
        return d.lm_head(x)


@contextlib.contextmanager
def compute_skipped() -> Iterator[None]:
    """Ring blocks and local document attention compute nothing (their transfers and shapes stay).

    ``forward_block``/``backward_block`` fill a ring's output and gradient buffers in place; without
    them those keep their zeros, which only their values see. The local attention returns an empty
    [T, Hq, D] tensor. Each module that imported them is patched for the duration, then restored.
    """
    from hdp.runtime.attention import dispatch
    from hdp.runtime.attention.ring import blocks

    def no_block(*args: Any, **kwargs: Any) -> None:
        return None

    def no_doc_attention(q: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return q.new_empty(q.shape), None

    patched: list[tuple[Any, str, Any]] = []
    real = {"forward_block": blocks.forward_block, "backward_block": blocks.backward_block}
    for name, module in list(sys.modules.items()):
        if name.startswith("hdp.runtime.attention.ring") and module is not None:
            patched += [(module, attr, fn) for attr, fn in real.items() if getattr(module, attr, None) is fn]
    patched.append((dispatch, "doc_attention", dispatch.doc_attention))
    try:
        for module, attr, _ in patched:
            setattr(module, attr, no_doc_attention if attr == "doc_attention" else no_block)
        yield
    finally:
        for module, attr, fn in patched:
            setattr(module, attr, fn)
