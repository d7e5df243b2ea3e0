"""``--pp`` for ``--hf-model``: one pipeline stage of a transformers causal LM, its own modelling code unpatched.

Every stage loads the same model (the directory's weights, or the same seeded random init), so its
values equal the whole model's, then ``cut_to_stage`` drops what another stage runs: the layers
outside ``stage_layers(num_layers, P, s)``, the embedding (all but stage 0), the final norm and the
LM head (all but the last). The kept layers stay in ``model.layers`` under their whole-model index
(``ModuleList.add_module(str(i), ...)``, as the built-in ``Trunk`` does), so parameter names are
``model.layers.{i}.…`` on every stage and the stages' parameters join into the whole model
(``pipeline.gather``, ``whole_hf``) with no renaming; dropped modules are None, their memory freed.

``stage_forward`` runs the same calls the model's own forward makes (``LlamaModel.forward``): the
embedding, ``rotary_emb(hidden, position_ids)`` once per micro-batch (on every stage: it holds only
its inverse frequencies), each decoder layer with the position embeddings, ``position_ids`` and the
layout as the ``hdp_layout`` keyword (hdp's mask function returns None, so the mask is None), then
the norm and ``lm_head``. Tied embeddings would put one parameter on two stages: refused
(``pipeline.checks``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hdp.plan.cost.memory import stage_layers
from hdp.runtime.model.hf_attention import LAYOUT_KWARG


def cut_to_stage(hf: nn.Module, stage: tuple[int, int]) -> None:
    """Keep only stage ``s`` of ``P``'s modules of ``hf`` (in place), under the whole model's names."""
    s, P = stage
    base = hf.model
    if getattr(base, "rotary_emb", None) is None:
        raise ValueError(f"--pp {P}: {hf.config.model_type} has no model.rotary_emb for the stages to share")
    if hf.config.tie_word_embeddings:
        raise ValueError(f"--pp {P}: tied embeddings (tie_word_embeddings) would put one weight on two stages")
    whole = base.layers
    kept = nn.ModuleList()
    for i in stage_layers(len(whole), P, s):  # in order: iteration follows insertion
        kept.add_module(str(i), whole[i])
    base.layers = kept
    if s > 0:
        base.embed_tokens = None
    if s < P - 1:
        base.norm = None
        hf.lm_head = None


def stage_forward(hf: nn.Module, x: torch.Tensor, positions: torch.Tensor, layout: Any) -> torch.Tensor:
    """Token ids [T] (stage 0) or the previous stage's output [T, h] -> this stage's output [T, h], or
    logits [T, V] on the last stage: the whole model's forward restricted to this stage's modules."""
    base = hf.model
    h = base.embed_tokens(x[None]) if base.embed_tokens is not None else x[None]    # [1, T, h]
    position_ids = positions[None]
    rope = base.rotary_emb(h, position_ids=position_ids)                            # (cos, sin)
    for layer in base.layers:
        h = layer(h, attention_mask=None, position_embeddings=rope, position_ids=position_ids,
                  **{LAYOUT_KWARG: layout})
    if base.norm is None:
        return h[0]
    return hf.lm_head(base.norm(h))[0]                                              # [T, V]


def whole_hf(config: Any, dtype: torch.dtype, state: dict[str, torch.Tensor]) -> nn.Module:
    """The whole transformers model (on the host) holding every stage's parameters ``state`` (names as
    ``HFCausalLM`` has them, ``hf.``-prefixed); strict: each parameter came from some stage."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    hf.load_state_dict({n[len("hf."):]: t for n, t in state.items()}, strict=True)
    return hf
