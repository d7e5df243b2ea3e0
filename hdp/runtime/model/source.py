"""Which model a run trains: a built-in preset (``--model``) or a Hugging Face directory (``--hf-model``).

Both give the train step the same interface (tokens, positions, layout -> logits) and the planner a
``ModelConfig`` for its cost model, so nothing downstream branches on the kind of model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hdp.plan.cost.model_config import ModelConfig, get_model
from hdp.runtime.config import TrainConfig


def model_shape(config: TrainConfig) -> ModelConfig:
    """The model's shape for planning; for ``--hf-model`` this reads (and checks) its config.json only.
    Router-loss flags on a dense model are refused here, before any process starts."""
    if config.hf_model is None:
        shape = get_model(config.model)
    else:
        from hdp.runtime.model.hf_model import load_hf_config, model_shape as hf_shape

        shape = hf_shape(load_hf_config(config.hf_model, config.max_seq_len), f"hf:{config.hf_model}")
    config.check_router_flags(shape.is_moe, config.hf_model or config.model)
    check_tp_run(config, shape)
    return shape


def check_tp_run(config: TrainConfig, shape: ModelConfig) -> None:
    """What ``--tp`` > 1 cannot do yet, refused in one line before any process starts."""
    if config.tp == 1:
        return
    from hdp.runtime.model.tensor_parallel import check_tp

    check_tp(shape, config.tp, config.hf_model or config.model)
    if config.hf_model is not None:  # transformers' own TP plan, applied by hdp.runtime.model.hf_parallel
        from hdp.runtime.model.hf_model import load_hf_config
        from hdp.runtime.model.hf_parallel import check_hf_tp

        check_hf_tp(load_hf_config(config.hf_model, config.max_seq_len), config.tp, repr(config.hf_model))


def matmul_precision(device_type: str, dtype: torch.dtype) -> str | None:
    """``"tf32"`` for float32 on CUDA; None (torch's own setting, IEEE) for every other device or dtype."""
    return "tf32" if device_type == "cuda" and dtype == torch.float32 else None


def configure_matmul(device: torch.device, dtype: torch.dtype) -> str | None:
    """Enable TF32 float32 matmuls where ``matmul_precision`` says so (process-wide: one rank, one device).

    Only the new-style ``fp32_precision`` switch is set: mixed with the legacy ``allow_tf32``, torch
    refuses to report the precision at all.
    """
    precision = matmul_precision(device.type, dtype)
    if precision is not None:
        torch.backends.cuda.matmul.fp32_precision = precision
    return precision


def build_train_model(config: TrainConfig, device: torch.device, tp: Any = None,
                      stage: tuple[int, int] = (0, 1)) -> nn.Module:
    """The model every rank builds identically (weights from the directory, or seeded from ``--seed``),
    with its device's matmul precision set (``configure_matmul``: TF32 where float32 remains on CUDA).
    ``tp`` (a ``tensor_parallel.TensorParallel``): this rank's shards (either kind of model); ``stage``
    (s, P) with ``--pp``: only pipeline stage s's layers."""
    configure_matmul(device, config.torch_dtype)
    model: nn.Module
    if config.hf_model is None:
        from hdp.runtime.model.decoder import build_model

        model = build_model(get_model(config.model), dtype=config.torch_dtype, device=device, seed=config.seed,
                            recompute=config.recompute == "full", tp=tp, stage=stage)
    else:
        from hdp.runtime.model.hf_model import build_hf_model

        model = build_hf_model(config.hf_model, dtype=config.torch_dtype, device=device, seed=config.seed,
                               max_seq_len=config.max_seq_len, recompute=config.recompute == "full", tp=tp,
                               stage=stage)
    if model.cfg.is_moe:  # the train step's router losses (hdp.runtime.train.aux_loss) read it
        model.router_spec = config.router_spec
    return model


def gather_full_model(model: nn.Module) -> nn.Module:
    """The single-process model holding a TP-sharded ``model``'s shards all-gathered (``--export-hf``);
    collective over the TP group."""
    if getattr(model, "hf", None) is not None:
        from hdp.runtime.model.hf_model import gather_hf

        return gather_hf(model)
    from hdp.runtime.model.decoder import gather_model

    return gather_model(model)
