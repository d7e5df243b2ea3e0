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
    refused = [(config.hf_model is not None, "--hf-model (the built-in --model decoders run pipelined)"),
               (shape.is_moe, "a mixture-of-experts model (the router losses span every stage's layers)"),
               (config.tp > 1, f"--tp {config.tp} (tensor and pipeline parallelism together)"),
               (config.offload or bool(config.offload_ratio), "activation offloading (--offload/--offload-ratio)")]
    what = [w for on, w in refused if on]
    if what:
        raise ValueError(f"--pp {pp} with {what[0]}: not supported yet")
