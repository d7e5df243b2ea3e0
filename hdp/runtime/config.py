"""What ``hdp train`` runs: one frozen config, shared by the launcher, every rank and the benchmarks."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

import torch

from hdp.plan.strategies import STRATEGIES
from hdp.plan.types import RING_ALGOS

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
TRAIN_STRATEGIES = tuple(STRATEGIES)  # the planner's table (hdp.plan.strategies)
OVERRIDES: dict[str, tuple[str, ...]] = {"lr": ("lr", "min_lr"),
                                         "schedule": ("schedule_steps", "warmup_steps", "lr_schedule")}
"""``--override`` names and the checkpoint config fields each lets a resumed run change."""
AUX_LOSSES = ("document", "micro-batch", "none")
"""``--aux-loss``: the load-balancing loss of a mixture-of-experts model (hdp.runtime.train.aux_loss)."""
DEFAULT_AUX_LOSS_COEF = 0.001
"""transformers' ``router_aux_loss_coef`` default (MixtralConfig, Qwen2/3-MoE): our loss has its scale
(k at perfect balance), so the coefficient means what it means there."""


@dataclass(frozen=True)
class RouterSpec:
    """The router losses a mixture-of-experts model trains with (``--aux-loss*``, ``--z-loss-coef``)."""

    aux_loss: str = "document"
    aux_loss_coef: float = DEFAULT_AUX_LOSS_COEF
    z_loss_coef: float = 0.0


def dtype_for_device(device_type: str) -> str:
    """The default ``--dtype`` for ranks on ``device_type``: float32 on CPU (the exact tests' dtype), bfloat16
    on accelerators, where float32 has no fused flash kernel and ring pairs fall back to the matmul kernel's
    [H, Nq, Nk] scores (fp32 master weights and moments stay either way: ``optim.precision``)."""
    return "float32" if device_type == "cpu" else "bfloat16"


def default_dtype() -> str:
    """``dtype_for_device`` of this machine's accelerator, if it has one (the device the launcher gives ranks)."""
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return dtype_for_device(accelerator.type if accelerator is not None else "cpu")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "tiny"
    """Model preset (hdp.plan.cost.model_config.PRESETS)."""
    dtype: Literal["float32", "bfloat16", "float64"] = field(default_factory=default_dtype)
    """Parameter and activation dtype; bfloat16 trains with fp32 master weights, moments and gradient reduction.
    Default ``default_dtype()``: bfloat16 where this machine has an accelerator, float32 on CPU."""
    steps: int = 20
    global_batch_tokens: int = 4096
    """Tokens per step, whatever the number of ranks."""
    capacity: int | None = None
    """Tokens one micro-batch may hold on one rank (the planner's C); longer sequences become rings.
    None: the smallest that lets the strategy hold ``max_seq_len`` on the ranks launched (256 for the
    default 1,024-token documents on 4 ranks, 1,024 on 1 rank)."""
    max_seq_len: int = 1024
    """Documents are cut into pieces of at most this many tokens."""
    strategy: Literal["auto", "hdp", "static", "pow2"] = "auto"
    seed: int = 0
    """Seeds the data order and the weights."""
    lr: float = 3e-3
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    timeout_s: float = 60.0
    """Seconds a rank waits for a peer: hdp's own deadline for ring transfers on every backend, and on gloo
    the process groups' timeout. NCCL's watchdog gets 30 min until the first step completes, then
    max(10 min, 2 x this), so hdp's message comes first (``hdp.runtime.parallel.groups``)."""
    offload: bool = False
    """Plan with selective activation offloading (make_plan(offload=True))."""
    offload_ratio: float | None = None
    """Offload round(R * (layers - 2)) layers in every micro-batch, whatever the plan says (a user
    override; converted to whole layers once, by the planner's rule)."""
    data: str | None = None
    """Corpus directory or file; None: the Python standard library's source."""
    metrics: str | None = None
    """JSONL file, one object per step (written by rank 0)."""
    tensorboard: str | None = None
    """Directory for TensorBoard event files (rank 0 writes every metric as a scalar)."""
    progress: bool = True
    """Rich progress bar and summary on rank 0."""
    zero: int | None = None
    """0: replicate parameters, gradients and AdamW states; 1: shard fp32 master weights and moments over
    all ranks; 2: also keep only this rank's shard of the reduced gradient. None: 1 with more than one rank."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = 0
    """Steps of linear warmup from lr / warmup_steps to lr."""
    min_lr: float | None = None
    """Where cosine and linear decay end; None: lr / 10."""
    recompute: Literal["none", "full"] = "none"
    """full: every layer's activations are recomputed in backward (torch.utils.checkpoint, non-reentrant)."""
    export_hf: str | None = None
    """Write the trained model here as a Hugging Face directory (rank 0, at the end)."""
    hf_model: str | None = None
    """Train this local Hugging Face causal-LM directory instead of the ``model`` preset."""
    aux_loss: Literal["document", "micro-batch", "none"] = "document"
    """MoE load-balancing loss: per document, independent of how the batch is cut (default), transformers'
    per micro-batch (depends on the cut), or none. A dense model refuses micro-batch."""
    aux_loss_coef: float = DEFAULT_AUX_LOSS_COEF
    """Weight of the load-balancing loss in the trained loss (transformers' router_aux_loss_coef)."""
    z_loss_coef: float = 0.0
    """Weight of the router z-loss (ST-MoE: mean over tokens of logsumexp(router logits)^2); 0: off."""
    tokenizer: str | None = None
    """A tokenizer.json or local Hugging Face tokenizer directory; None: byte-level tokens."""
    text_field: str = "text"
    """The field holding the text in JSONL, Parquet and datasets inputs."""
    dump_batches: str | None = None
    """JSONL file, one line per step with the token ids of every sequence of the batch (rank 0)."""
    gpus_per_node: int | None = None
    """Ranks per node (rank r is on node r // gpus_per_node), for node-aware rings. None: the plan's if it
    has one, else LOCAL_WORLD_SIZE under torchrun, else every local process on one node."""
    ring_algo: Literal["flat", "two-level", "bidirectional"] | None = None
    """Ring attention algorithm for every ring that can run it (others run flat); None: as the plan says."""
    on_nan: Literal["stop", "skip"] = "stop"
    """A step whose loss or gradient is NaN/Inf: stop the run (exit 4) or skip its update and go on."""
    save_dir: str | None = None
    """Write checkpoints here (``step-NNNNNN/``, hdp.runtime.checkpoint.state)."""
    save_every: int | None = None
    """Checkpoint after every N steps (and after the last); None with save_dir: only after the last."""
    keep: int = 2
    """Complete checkpoints kept in save_dir (older ones are deleted once a newer one is complete)."""
    async_save: bool = False
    """Write checkpoints in the background (DCP async_save) while the next steps train."""
    resume: str | None = None
    """A checkpoint directory, or a save_dir (its newest checkpoint), to continue from."""
    max_restarts: int = 0
    """Times the local launcher restarts all ranks from the newest checkpoint after a rank died."""
    schedule_steps: int | None = None
    """Steps the LR schedule decays over; None: ``steps``. Lets a run stopped early resume exactly."""
    plan_ahead: int = 2
    """Steps planned ahead in background processes while a step trains (``hdp.runtime.train.plan_ahead``);
    0: each step plans when it begins."""
    log_every: int | None = None
    """Rank 0 prints one plain line every N steps (flushed): always with N given, else every step when
    stdout is not a terminal (a log file, nohup, SLURM) and the progress bar on a terminal."""
    profile: str | None = None
    """Device profile for the planner's cost model and the MFU peak: a shipped name or an ``hdp calibrate``
    file. None: the planner's default, and on CPU the shipped CPU profile's peak for MFU."""
    tp: int = 1
    """Tensor-parallel size of one HDP rank: each layer's heads and MLP columns split over ``tp``
    consecutive processes (``hdp.runtime.parallel.mesh``). Fixed for the run."""
    pp: int = 1
    """Pipeline stages of one HDP rank: its layers split over ``pp`` processes, run as 1F1B. Fixed for the run."""
    overrides: tuple[str, ...] = ()
    """Deliberate changes a resumed run may make to the checkpoint's config (``OVERRIDES``): ``lr``
    (--lr, --min-lr) and ``schedule`` (--schedule-steps / --steps, --warmup-steps, --lr-schedule)."""
    run_config: str | None = field(default=None, compare=False)
    """The command's effective flags as TOML (``hdp train --print-config``), recorded in the metrics file's
    first record and in every checkpoint so the run can be replayed with ``--config``; None: not from the CLI."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.strategy not in TRAIN_STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(TRAIN_STRATEGIES)}, got {self.strategy!r}")
        for name in ("steps", "global_batch_tokens", "capacity", "max_seq_len"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.timeout_s < math.inf:
            raise ValueError(f"--timeout must be a finite number of seconds > 0, got {self.timeout_s}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"--lr must be a finite number > 0, got {self.lr}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"--min-lr must be in [0, --lr {self.lr:g}], got {self.min_lr}")
        if not 0 <= self.weight_decay < math.inf or not 0 <= self.max_grad_norm < math.inf:
            raise ValueError("weight decay and max grad norm must be finite numbers >= 0")
        if self.zero is not None and self.zero not in (0, 1, 2):
            raise ValueError(f"--zero must be 0, 1 or 2, got {self.zero}")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"--lr-schedule must be constant, cosine or linear, got {self.lr_schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.recompute not in ("none", "full"):
            raise ValueError(f"--recompute must be none or full, got {self.recompute!r}")
        if self.recompute == "full" and (self.offload or self.offload_ratio is not None):
            raise ValueError("--recompute full keeps only each layer's input, so offloading has nothing to move: "
                             "drop --offload/--offload-ratio or use --recompute none")
        if self.gpus_per_node is not None and self.gpus_per_node < 1:
            raise ValueError(f"--gpus-per-node must be >= 1, got {self.gpus_per_node}")
        if self.ring_algo is not None and self.ring_algo not in RING_ALGOS:
            raise ValueError(f"--ring-algo must be one of {', '.join(RING_ALGOS)}, got {self.ring_algo!r}")
        if self.offload_ratio is not None and not 0.0 <= self.offload_ratio <= 1.0:  # also refuses nan
            raise ValueError(f"--offload-ratio must be in [0, 1], got {self.offload_ratio}")
        if self.aux_loss not in AUX_LOSSES:
            raise ValueError(f"--aux-loss must be one of {', '.join(AUX_LOSSES)}, got {self.aux_loss!r}")
        for name in ("aux_loss_coef", "z_loss_coef"):
            if not 0 <= getattr(self, name) < math.inf:  # also refuses nan
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(self, name)}")
        if self.on_nan not in ("stop", "skip"):
            raise ValueError(f"--on-nan must be stop or skip, got {self.on_nan!r}")

        if self.save_every is not None and (self.save_every < 1 or not self.save_dir):
            raise ValueError("--save-every needs --save-dir and must be >= 1")
        if self.keep < 1 or self.max_restarts < 0:
            raise ValueError(f"--keep must be >= 1 and --max-restarts >= 0, got {self.keep} and {self.max_restarts}")
        if self.save_dir:
            _check_save_dir(self.save_dir)
        if self.max_restarts and not self.save_dir:
            raise ValueError("--max-restarts needs --save-dir: restarts resume from its newest checkpoint")
        if self.plan_ahead < 0:
            raise ValueError(f"--plan-ahead must be >= 0, got {self.plan_ahead}")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise ValueError(f"--schedule-steps must be >= 1, got {self.schedule_steps}")
        if self.log_every is not None and self.log_every < 1:
            raise ValueError(f"--log-every must be >= 1, got {self.log_every}")
        if self.tp < 1 or self.pp < 1:
            raise ValueError(f"--tp and --pp must be >= 1, got {self.tp} and {self.pp}")
        unknown = [o for o in self.overrides if o not in OVERRIDES]
        if unknown:
            raise ValueError(f"--override {','.join(unknown)}: expected a comma-separated list of "
                             f"{', '.join(OVERRIDES)}")

    @property
    def router_spec(self) -> RouterSpec:
        return RouterSpec(self.aux_loss, self.aux_loss_coef, self.z_loss_coef)

    def check_router_flags(self, is_moe: bool, model: str) -> None:
        """A dense model has no router: a router-loss flag that would change something there is refused."""
        if is_moe:
            return
        given = [f for f, on in (("--aux-loss micro-batch", self.aux_loss == "micro-batch"),
                                 (f"--aux-loss-coef {self.aux_loss_coef:g}", self.aux_loss_coef != DEFAULT_AUX_LOSS_COEF),
                                 (f"--z-loss-coef {self.z_loss_coef:g}", self.z_loss_coef != 0)) if on]
        if given:
            raise ValueError(f"{', '.join(given)}: model {model} is dense (no experts, no router); the router "
                             "losses apply to mixture-of-experts models only")

    @property
    def lr_steps(self) -> int:
        """Steps the learning-rate schedule spans."""
        return self.schedule_steps if self.schedule_steps is not None else self.steps

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def zero_for(self, world_size: int) -> int:
        """The zero stage a run of ``world_size`` ranks uses (default: 1 when sharding is possible)."""
        return self.zero if self.zero is not None else (1 if world_size > 1 else 0)

    @property
    def final_lr(self) -> float:
        return self.min_lr if self.min_lr is not None else self.lr / 10


def _check_save_dir(path: str) -> None:
    """--save-dir must be a directory we can create or write into: found before any rank starts, not at
    the first save."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--save-dir {path!r} is a file: give a directory (created if missing)")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(os.path.abspath(parent))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--save-dir {path!r}: {parent!r} is not a writable directory; choose another --save-dir")
