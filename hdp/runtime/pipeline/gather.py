"""The whole model from one pipeline's stages, on global rank 0: what ``--export-hf`` writes with ``--pp``."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from hdp.runtime.model.decoder import Decoder


def gather_stages(model: Any, groups: Any) -> Any:
    """Collective over the world (on the host group): pipeline 0's stages (TP index 0) send their
    parameters to rank 0, which returns the single-process model on the host (a ``Decoder``, or an
    ``HFCausalLM`` for ``--hf-model``) holding them all (HF's
    names are kept per stage, so the parts fit together); every other process returns None.
    Every pipeline holds the same values after a step (the pool all-gather), so one is enough."""
    c = groups.coord
    own = {n: p.detach().cpu() for n, p in model.named_parameters()} if c.hdp == 0 and c.tp == 0 else {}
    parts: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None  # type: ignore[assignment]
    dist.gather_object(own, parts, dst=0, group=groups.host)
    if parts is None:
        return None
    state = {n: t for part in parts for n, t in part.items()}
    if getattr(model, "hf", None) is not None:  # --hf-model: transformers' whole model, every stage's parameters
        from hdp.runtime.model.hf_model import HFCausalLM
        from hdp.runtime.model.hf_stage import whole_hf

        return HFCausalLM(whole_hf(model.hf.config, next(model.parameters()).dtype, state), model.cfg.name)
    with torch.device("meta"):
        whole = Decoder(model.cfg)
    whole = whole.to(dtype=next(model.parameters()).dtype).to_empty(device=torch.device("cpu"))
    whole.load_state_dict(state)  # strict: every parameter of the whole model came from some stage
    return whole
