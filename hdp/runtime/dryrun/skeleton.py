"""The model reduced to what communicates: the real parameters, attention calls only.

At 1,024 ranks a fake forward and backward of every layer's projections and MLP would take
minutes and communicate nothing. The skeleton keeps the real model's parameters (so the
optimizer's flat buffers, reduce-scatter and all-gather have their real sizes) and, per layer,
the one call that communicates: ``attention(q, k, v, layout)`` on tensors of the layer's real
shapes ([T, Hq, D], [T, Hkv, D]) taken from the residual stream, so autograd runs every ring
backward. A test checks that it issues the same ops as the full model.

``fast_meta_adds``: on ``meta`` tensors torch computes ``add``'s output shape in Python (``torch._refs``,
0.4-2 ms a call); autograd's gradient sums and the ring's dK/dV sums make ~100 of them per busy rank.
For the common case (same shape, dtype and contiguous strides) the result is known without it.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
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


def _same_layout(x: torch.Tensor, y: Any) -> bool:
    return (isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype
            and x.is_contiguous() and y.is_contiguous())


@contextlib.contextmanager
def fast_meta_adds() -> Iterator[None]:
    """``add``/``add_`` of two contiguous meta tensors of one shape and dtype answer at C++ speed.

    The result is what torch's own meta kernel gives (a contiguous tensor of that shape and dtype;
    ``add_`` returns its input), and any other case goes to that kernel. Registered on the ``Meta``
    key for the duration only: destroying the library restores torch's kernel.
    """
    ref_add = torch._refs.add
    ref_add_ = torch._meta_registrations.meta_binop_inplace_alpha  # type: ignore[attr-defined]

    def add(x: torch.Tensor, y: Any, *, alpha: Any = 1) -> torch.Tensor:
        return torch.empty_like(x, memory_format=torch.contiguous_format) if _same_layout(x, y) else ref_add(x, y, alpha=alpha)

    def add_(x: torch.Tensor, y: Any, *, alpha: Any = 1) -> torch.Tensor:
        return x if _same_layout(x, y) else ref_add_(x, y, alpha=alpha)

    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "overriding a previously registered kernel": that is the point
        warnings.simplefilter("ignore")
        lib.impl("add.Tensor", add, "Meta")
        lib.impl("add_.Tensor", add_, "Meta")
    try:
        yield
    finally:
        lib._destroy()


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
