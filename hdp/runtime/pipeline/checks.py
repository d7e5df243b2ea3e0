"""What ``--pp`` > 1 does not do yet, refused in one line before any process starts."""

from __future__ import annotations

from hdp.plan.cost.model_config import ModelConfig
from hdp.runtime.config import TrainConfig


def check_pp_run(config: TrainConfig, shape: ModelConfig) -> None:
    """Raise ``ValueError`` (one line) for a ``--pp`` run the pipeline executor cannot run exactly."""
    pp = config.pp
    if pp == 1:
        return
    name = config.hf_model or config.model
    if pp > shape.num_layers:
        raise ValueError(f"--pp {pp}: model {name} has {shape.num_layers} layers, one stage needs at least one")
    refused = [(config.hf_model is not None and config.tp > 1,
                f"--hf-model and --tp {config.tp} (an HF model runs pipelined or tensor parallel, not both)"),
               (config.hf_model is not None and _tied(config),
                "--hf-model with tied embeddings (tie_word_embeddings: one weight on the first and last stage)"),
               (shape.is_moe, "a mixture-of-experts model (the router losses span every stage's layers)"),
               (config.offload or bool(config.offload_ratio), "activation offloading (--offload/--offload-ratio)")]
    what = [w for on, w in refused if on]
    if what:
        raise ValueError(f"--pp {pp} with {what[0]}: not supported yet")


def _tied(config: TrainConfig) -> bool:
    """Whether the ``--hf-model`` config ties the LM head to the embedding (read, and checked, once more)."""
    from hdp.runtime.model.hf_model import load_hf_config

    return bool(getattr(load_hf_config(config.hf_model, config.max_seq_len), "tie_word_embeddings", False))
