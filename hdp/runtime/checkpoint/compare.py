"""What a resumed run must share with its checkpoint, compared by what decides the losses, never by
spelling: the exactness-deciding config (``files.EXACT_FIELDS``) with ``hf_model`` as a fingerprint of
the model's ``config.json``; the learning rate and schedule may change only on purpose (``--override``),
and a refusal names the way out (``--schedule-steps``, ``--override``). No torch: the launcher checks
before any rank starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from hdp.runtime.checkpoint import files
from hdp.runtime.config import OVERRIDES, TrainConfig


def exact_config(config: TrainConfig) -> dict[str, Any]:
    """The config fields that decide a run's losses (``files.EXACT_FIELDS``), as saved in ``hdp.json``.

    ``hf_model`` is the model's identity, not the spelling of its path: a fingerprint of its
    ``config.json`` (``hf_fingerprint``), so ``my_llama`` and ``/abs/my_llama`` are one model and another
    model copied under the same folder name is not."""
    values = {k: getattr(config, k) for k in (*files.EXACT_FIELDS, *files.LATER_FIELDS) if k != "schedule_steps"}
    if config.hf_model is not None:
        values["hf_model"] = hf_fingerprint(config.hf_model)
    return {**values, "schedule_steps": config.lr_steps}


HF_VOLATILE = ("transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype")
"""config.json keys that do not change the model (where it was saved from, the writer, the stored dtype:
the run's --dtype decides the compute dtype)."""


def hf_fingerprint(path: str) -> str:
    """``config.json sha256:<16 hex>`` of a Hugging Face model directory's architecture (its config.json
    without ``HF_VOLATILE``); the path itself when it has no readable config.json (refused elsewhere)."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return path
    if not isinstance(cfg, dict):
        return path
    canonical = json.dumps({k: v for k, v in cfg.items() if k not in HF_VOLATILE}, sort_keys=True)
    return "config.json sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def comparable_exact(config: TrainConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """This run's ``exact_config`` as compared with checkpoint ``manifest``: the fields ``--override`` names
    take the saved values (a deliberate change), and a checkpoint from before fingerprints (``hf_model``
    saved as a path) is compared with the path as typed, as it was then."""
    exact = exact_config(config)
    saved = manifest.get("config", {})
    for name in config.overrides:
        for key in OVERRIDES[name]:
            exact[key] = saved.get(key)
    if config.hf_model is not None and not str(saved.get("hf_model", "")).startswith("config.json sha256:"):
        exact["hf_model"] = config.hf_model
    check_schedule(saved, exact, config)
    return exact


def check_schedule(saved: dict[str, Any], exact: dict[str, Any], config: TrainConfig) -> None:
    """A changed schedule or learning rate, refused with the way out named: keep the saved schedule
    (``--schedule-steps``; steps past it train at its final lr) or change it on purpose (``--override``)."""
    if saved.get("schedule_steps") not in (None, exact["schedule_steps"]):
        raise ValueError(f"the checkpoint's learning-rate schedule spans {saved['schedule_steps']:,} steps (this run: "
                         f"{exact['schedule_steps']:,}): add --schedule-steps {saved['schedule_steps']} to keep it (steps "
                         f"past it train at its final lr), or --override schedule to re-stretch it over "
                         f"{exact['schedule_steps']:,} steps from here")
    for key, flag, name in (("lr", "--lr", "lr"), ("min_lr", "--min-lr", "lr"), ("warmup_steps", "--warmup-steps",
                            "schedule"), ("lr_schedule", "--lr-schedule", "schedule")):
        if key in saved and saved[key] != exact[key]:
            raise ValueError(f"the checkpoint was trained with {flag} {saved[key]} (this run: {exact[key]}): resume "
                             f"with {flag} {saved[key]}, or add --override {name} to change it from here on")
