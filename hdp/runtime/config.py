"""What ``hdp train`` runs: one frozen config, shared by the launcher, every rank and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
TRAIN_STRATEGIES = ("hdp", "static", "pow2")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "tiny"
    """Model preset (hdp.plan.model_config.PRESETS)."""
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    """Parameter and activation dtype."""
    steps: int = 20
    global_batch_tokens: int = 4096
    """Tokens per step, whatever the number of ranks."""
    capacity: int | None = None
    """Tokens one micro-batch may hold on one rank (the planner's C); longer sequences become rings.
    None: the smallest that lets the strategy hold ``max_seq_len`` on the ranks launched (256 for the
    default 1,024-token documents on 4 ranks, 1,024 on 1 rank)."""
    max_seq_len: int = 1024
    """Documents are cut into pieces of at most this many tokens."""
    strategy: Literal["hdp", "static", "pow2"] = "hdp"
    seed: int = 0
    """Seeds the data order and the weights."""
    lr: float = 3e-3
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    timeout_s: float = 60.0
    """Seconds a rank waits for a peer (process-group collectives and ring messages)."""
    offload: bool = False
    """Plan with selective activation offloading (make_plan(offload=True))."""
    offload_ratio: float | None = None
    """Offload round(R * (layers - 2)) layers in every micro-batch, whatever the plan says (a user
    override; converted to whole layers once, by the planner's rule)."""
    data: str | None = None
    """Corpus directory or file; None: the Python standard library's source."""
    metrics: str | None = None
    """JSONL file, one object per step (written by rank 0)."""
    progress: bool = True
    """Rich progress bar and summary on rank 0."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.strategy not in TRAIN_STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(TRAIN_STRATEGIES)}, got {self.strategy!r}")
        for name in ("steps", "global_batch_tokens", "capacity", "max_seq_len"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout_s}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.offload_ratio is not None and not 0.0 <= self.offload_ratio <= 1.0:
            raise ValueError(f"--offload-ratio must be in [0, 1], got {self.offload_ratio}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]
