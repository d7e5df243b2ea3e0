"""A Hugging Face model's shape from its ``config.json``, for the planner: no torch, no transformers.

``hdp plan``/``hdp simulate --hf-model DIR`` read the file with ``json``; ``hdp train --hf-model``
reads it with transformers (which also checks the model is one hdp can train) and passes the config
object to the same ``hf_model_shape``, so planning ahead and training see one shape.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from hdp.plan.cost.model_config import ModelConfig

REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
"""The config.json keys the shape needs (every Llama-family config has them)."""
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe")
"""Model types whose every layer is a sparse mixture of experts (``hdp.plan.cost.model_config``)."""


def hf_model_shape(config: Mapping[str, Any] | Any, name: str) -> ModelConfig:
    """The planner's view of the model (cost model, capacity): its widths and counts. ``config`` is the
    parsed config.json (a dict) or a transformers config object."""
    get = config.get if isinstance(config, Mapping) else (lambda key: getattr(config, key, None))
    heads = get("num_attention_heads")
    head_dim = get("head_dim") or get("hidden_size") // heads
    # ModelConfig derives head_dim from the width; where the model decouples them (Qwen3) keep the heads'.
    hidden = get("hidden_size") if get("hidden_size") == heads * head_dim else heads * head_dim
    moe = get("model_type") in MOE_FAMILIES
    # An MoE layer: each expert's width, the routed experts and top_k (Mixtral's intermediate_size is its experts').
    return ModelConfig(name, hidden_size=hidden, num_layers=get("num_hidden_layers"), num_heads=heads,
                       num_kv_heads=get("num_key_value_heads") or heads,
                       ffn_size=(get("moe_intermediate_size") if moe else None) or get("intermediate_size"),
                       vocab_size=get("vocab_size"),
                       num_experts=(get("num_local_experts") or get("num_experts")) if moe else 0,
                       top_k=get("num_experts_per_tok") if moe else 0)


def read_hf_config(path: str) -> dict[str, Any]:
    """``path/config.json`` as a dict, or ValueError in one line saying what to give ``--hf-model``."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        what = "does not exist" if not os.path.exists(path) else "has no config.json"
        raise ValueError(f"--hf-model {path!r} {what}: give a local Hugging Face model directory with a config.json")
    try:
        with open(file, "rb") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"--hf-model {path!r}: cannot read config.json ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--hf-model {path!r}: config.json is not a JSON object")
    bad = [k for k in REQUIRED if not isinstance(config.get(k), int) or isinstance(config.get(k), bool)
           or config[k] < 1]
    if bad:
        raise ValueError(f"--hf-model {path!r}: config.json needs positive integers {', '.join(bad)} "
                         "(a Llama-family causal LM's config)")
    return config


def load_hf_shape(path: str) -> ModelConfig:
    """``read_hf_config`` and ``hf_model_shape``, named as ``hdp train`` names it (``hf:PATH``)."""
    config = read_hf_config(path)
    try:
        return hf_model_shape(config, f"hf:{path}")
    except (TypeError, ValueError, ZeroDivisionError) as e:  # head counts that do not fit the width
        raise ValueError(f"--hf-model {path!r}: config.json has an inconsistent shape ({e})") from None
