"""``hdp train``: train a model with HDP (or a baseline strategy) on local CPU processes or under torchrun."""

from __future__ import annotations

import argparse

from hdp.plan.model_config import PRESETS
from hdp.runtime.config import DTYPES, TRAIN_STRATEGIES, TrainConfig

DEFAULTS = TrainConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--nproc", type=int, default=4, help="local processes to spawn, one accelerator each when there are enough, else CPU "
                        "(ignored under torchrun; default 4)")
    p.add_argument("--model", default=d.model, choices=list(PRESETS), help=f"model preset (default {d.model})")
    p.add_argument("--dtype", default=d.dtype, choices=list(DTYPES), help=f"default {d.dtype}")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--global-batch-tokens", type=int, default=d.global_batch_tokens,
                   help=f"tokens per step, independent of the number of ranks (default {d.global_batch_tokens})")
    p.add_argument("--capacity", type=int, default=d.capacity,
                   help="tokens per rank per micro-batch; longer sequences are split into rings "
                        "(default: the smallest that holds --max-seq-len on --nproc ranks)")
    p.add_argument("--max-seq-len", type=int, default=d.max_seq_len,
                   help=f"documents are cut into pieces of at most this many tokens (default {d.max_seq_len})")
    p.add_argument("--strategy", choices=TRAIN_STRATEGIES, default=d.strategy, help=f"planner (default {d.strategy})")
    p.add_argument("--seed", type=int, default=d.seed, help="data order and initial weights (default 0)")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="corpus: a directory of .py/.txt/.md files or one file (default: Python's standard library)")
    p.add_argument("--metrics", default=None, metavar="FILE", help="write one JSON object per step here (JSONL)")
    p.add_argument("--timeout", type=float, default=d.timeout_s,
                   help=f"seconds a rank waits for a peer before failing (default {d.timeout_s:g})")
    p.add_argument("--offload", action="store_true", help="plan with selective activation offloading")
    p.add_argument("--offload-ratio", type=float, default=None, metavar="R",
                   help="offload round(R * (layers - 2)) layers in every micro-batch, overriding the plan; "
                        "a ratio that offloads no layer of the model is an error")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or summary")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model, dtype=args.dtype, steps=args.steps, global_batch_tokens=args.global_batch_tokens,
        capacity=args.capacity, max_seq_len=args.max_seq_len, strategy=args.strategy, seed=args.seed, lr=args.lr,
        timeout_s=args.timeout, offload=args.offload, offload_ratio=args.offload_ratio, data=args.data, metrics=args.metrics,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from hdp.runtime.launch import launch

    return launch(config_from_args(args), args.nproc)
