"""Which model a run trains: a built-in preset (``--model``) or a Hugging Face directory (``--hf-model``).

Both give the train step the same interface (tokens, positions, layout -> logits) and the planner a
``ModelConfig`` for its cost model, so nothing downstream branches on the kind of model.
"""

from __future__ import annotations

import torch
from torch import nn

from hdp.plan.cost.model_config import ModelConfig, get_model
from hdp.runtime.config import TrainConfig


def model_shape(config: TrainConfig) -> ModelConfig:
    """The model's shape for planning; for ``--hf-model`` this reads (and checks) its config.json only."""
    if config.hf_model is None:
        return get_model(config.model)
    from hdp.runtime.model.hf_model import load_hf_config, model_shape as hf_shape

    return hf_shape(load_hf_config(config.hf_model, config.max_seq_len), f"hf:{config.hf_model}")


def build_train_model(config: TrainConfig, device: torch.device) -> nn.Module:
    """The model every rank builds identically (weights from the directory, or seeded from ``--seed``)."""
    if config.hf_model is None:
        from hdp.runtime.model.decoder import build_model

        return build_model(get_model(config.model), dtype=config.torch_dtype, device=device, seed=config.seed,
                           recompute=config.recompute == "full")
    from hdp.runtime.model.hf_model import build_hf_model

    return build_hf_model(config.hf_model, dtype=config.torch_dtype, device=device, seed=config.seed,
                          max_seq_len=config.max_seq_len, recompute=config.recompute == "full")
