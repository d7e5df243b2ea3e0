"""``hdp train``: train a model with HDP (or a baseline strategy) on local CPU processes or under torchrun."""

from __future__ import annotations

import argparse

from hdp.commands.config_file import EFFECTIVE_CONFIG, add_config_arguments
from hdp.commands.flags import (TRAIN_FLAGS, add_global_batch_tokens, add_max_len, add_pp, add_ranks, user_error,
                                with_strategy_table)
from hdp.plan.cost.model_config import PRESETS
from hdp.plan.schedule.sharding import PlanError
from hdp.plan.strategies import STRATEGIES
from hdp.plan.types import RING_ALGOS
from hdp.runtime.config import AUX_LOSSES, DTYPES, TrainConfig

DEFAULTS = TrainConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    add_ranks(p, "local processes to spawn, one accelerator each when there are enough, else CPU (ignored under "
                 "torchrun; default 4, a run on this machine; hdp plan plans 1024)", default=4, dest="nproc")
    p.add_argument("--model", default=d.model, choices=list(PRESETS),
                   help=f"model preset (default {d.model}, which trains on a CPU; hdp plan and hdp simulate default "
                        "to a production model)")
    p.add_argument("--dtype", default=d.dtype, choices=list(DTYPES),
                   help=f"default: bfloat16 with an accelerator (fp32 master weights and moments), float32 on CPU "
                        f"(here {d.dtype}); hdp calibrate measures bfloat16 on an accelerator")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"optimizer steps (default {d.steps}, a loss going down; hdp simulate times 1)")
    add_global_batch_tokens(p, f"tokens per step, independent of the number of ranks (default "
                               f"{d.global_batch_tokens:,}, a CPU step; hdp plan and hdp simulate default to 32M, "
                               "a production step)",
                            default=d.global_batch_tokens, dest="global_batch_tokens")
    p.add_argument("--capacity", type=int, default=d.capacity,
                   help="tokens per rank per micro-batch; longer sequences are split into rings "
                        "(default: the smallest that holds --max-seq-len on --nproc ranks)")
    add_max_len(p, f"documents are cut into pieces of at most this many tokens (default {d.max_seq_len:,}, which "
                   "keeps a CPU run short; hdp plan and hdp simulate default to 2M, a long-context production batch)",
                default=d.max_seq_len, dest="max_seq_len")
    p.add_argument("--strategy", choices=list(STRATEGIES), default=d.strategy,
                   help=f"planner preset (table below; default {d.strategy}, one planner per step; hdp plan "
                        "defaults to auto, which plans with each strategy and keeps the fastest)")
    p.add_argument("--seed", type=int, default=d.seed, help="data order and initial weights (default 0)")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="a JSONL or Parquet file, a datasets save_to_disk directory, a directory of .py/.txt/.md "
                        "files, one text file, or a store from 'hdp data prepare' (default: Python's standard library)")
    p.add_argument("--metrics", default=None, metavar="FILE", help="write one JSON object per step here (JSONL)")
    p.add_argument("--timeout", type=float, default=d.timeout_s,
                   help=f"seconds a rank waits for a peer before failing (default {d.timeout_s:g})")
    p.add_argument("--offload", action="store_true",
                   help="kept for old scripts: hdp-naive -> hdp-offload, hdp-balance -> hdp (hdp already offloads)")
    p.add_argument("--offload-ratio", type=float, default=None, metavar="R",
                   help="offload round(R * (layers - 2)) layers in every micro-batch, overriding the plan; "
                        "a ratio that offloads no layer of the model is an error")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or summary")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="a tokenizer.json or local Hugging Face tokenizer directory (default: byte-level)")
    p.add_argument("--text-field", default=d.text_field, metavar="NAME",
                   help=f"field holding the text in JSONL/Parquet/datasets inputs (default {d.text_field})")
    p.add_argument("--dump-batches", default=None, metavar="FILE",
                   help="write each step's token ids here, one JSON line per step (rank 0)")
    p.add_argument("--export-hf", default=None, metavar="DIR",
                   help="at the end, write the model as a Hugging Face directory (config.json + model.safetensors)")
    p.add_argument("--hf-model", default=None, metavar="DIR",
                   help="train this local Hugging Face causal LM (config.json, weights if present) instead of --model")
    moe = p.add_argument_group("mixture-of-experts models (docs/moe.md)")
    moe.add_argument("--aux-loss", choices=AUX_LOSSES, default=d.aux_loss,
                     help="load-balancing loss: document (default; per document, so 1 rank and N ranks train alike "
                          "however the batch is cut: a ring's members combine their expert counts), micro-batch "
                          "(transformers' load_balancing_loss_func per micro-batch: depends on the cut), none")
    moe.add_argument("--aux-loss-coef", type=float, default=d.aux_loss_coef, metavar="C",
                     help=f"weight of the load-balancing loss (default {d.aux_loss_coef:g}, transformers' "
                          "router_aux_loss_coef for Mixtral and Qwen-MoE)")
    moe.add_argument("--z-loss-coef", type=float, default=d.z_loss_coef, metavar="C",
                     help="weight of the router z-loss, mean over tokens of logsumexp(router logits)^2 "
                          "(ST-MoE; default 0: off)")
    p.add_argument("--zero", type=int, choices=(0, 1, 2), default=None,
                   help="0: replicate optimizer states; 1: shard fp32 master weights and AdamW moments over all ranks; "
                        "2: also keep only this rank's gradient shard (default 1 with more than one rank, as hdp plan "
                        "assumes; 0 on one rank, where there is nothing to shard)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default=d.lr_schedule,
                   help=f"learning-rate decay after warmup (default {d.lr_schedule})")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warmup steps (default 0)")
    p.add_argument("--min-lr", type=float, default=None, help="where the decay ends (default --lr / 10)")
    p.add_argument("--recompute", choices=("none", "full"), default=d.recompute,
                   help="full: recompute every layer's activations in backward (default none)")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write every metric as TensorBoard scalars here (rank 0; needs the tensorboard package)")
    p.add_argument("--gpus-per-node", type=int, default=None, metavar="N",
                   help="ranks per node (rank r on node r // N); given, the planner places rings by node and sees "
                        "their transfers (default: the plan's, else LOCAL_WORLD_SIZE under torchrun, else all local "
                        "processes on one node: the node it runs on; hdp plan assumes 8)")
    p.add_argument("--ring-algo", choices=RING_ALGOS, default=None,
                   help="ring attention for every ring that can run it, the others run flat: flat (one ring), "
                        "two-level (inner ring per node, parallel outer rings across nodes; needs node-aligned rings), "
                        "bidirectional (half the KV heads each way; needs 2+ KV heads) (default: two-level with "
                        "--gpus-per-node, as hdp plan, else as the plan says)")
    p.add_argument("--on-nan", choices=("stop", "skip"), default=d.on_nan,
                   help="a step with a NaN/Inf loss or gradient: stop the run (exit 4; default) or skip its update")
    p.add_argument("--save-dir", default=None, metavar="DIR",
                   help="write sharded checkpoints (torch.distributed.checkpoint) here as step-NNNNNN/ (docs/checkpoint.md)")
    p.add_argument("--save-every", type=int, default=None, metavar="N",
                   help="checkpoint after every N steps (default: only after the last step)")
    p.add_argument("--keep", type=int, default=d.keep, metavar="N",
                   help=f"complete checkpoints kept in --save-dir (default {d.keep})")
    p.add_argument("--async-save", action="store_true", help="write checkpoints in the background while training")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue to --steps from a checkpoint: a step-* directory or a --save-dir (its newest); "
                        "the world size may differ from the saved run's")
    p.add_argument("--max-restarts", type=int, default=d.max_restarts, metavar="N",
                   help="restart all local ranks from the newest checkpoint in --save-dir after a rank dies "
                        "(default 0: a dead rank ends the run)")
    p.add_argument("--plan-ahead", type=int, default=d.plan_ahead, metavar="D",
                   help=f"plan steps s+1..s+D in background processes while step s trains, so a step never waits "
                        f"for a plan that takes less than D steps (default {d.plan_ahead}; 0: plan each step as it begins)")
    p.add_argument("--schedule-steps", type=int, default=None, metavar="N",
                   help="steps the learning-rate schedule spans (default --steps); lets a run stop early and resume "
                        "exactly, and --steps beyond it train at the schedule's final lr")
    p.add_argument("--log-every", type=int, default=None, metavar="N",
                   help="print one plain line every N steps (default: every step when stdout is not a terminal, "
                        "e.g. a log file; the progress bar on a terminal)")
    p.add_argument("--override", default="", metavar="WHAT",
                   help="with --resume, deliberately change the checkpoint's config: lr (--lr, --min-lr), schedule "
                        "(--schedule-steps/--steps, --warmup-steps, --lr-schedule), or lr,schedule; recorded in the "
                        "metrics (exactness holds for unchanged runs only)")
    p.add_argument("--profile", "--cost-model", dest="profile", default=None, metavar="PROFILE",
                   help="device profile for the planner's cost model and the MFU peak: a shipped name or an "
                        "'hdp calibrate' JSON file (default: the planner's, and the shipped CPU profile's peak on CPU)")
    p.add_argument("--tp", type=int, default=d.tp, metavar="T",
                   help="tensor-parallel size of one HDP rank: T consecutive processes split each layer's heads and "
                        "MLP (default 1); --nproc = HDP ranks x T x P")
    add_pp(p, "pipeline stages of one HDP rank, run as 1F1B over micro-batches of different lengths (default 1)")
    dry = p.add_argument_group("dry run (docs/dry-run.md)")
    dry.add_argument("--dry-run", action="store_true",
                     help="run one step of every rank's control flow in this process (fake process group, meta "
                          "tensors), check the collectives and P2P ops as NCCL would match them, print per-rank "
                          "memory, peers, host syncs and bytes per link; exit 1 on a mismatch. Starts no process")
    dry.add_argument("--world-size", type=int, default=None, metavar="N",
                     help="ranks of the dry run (default --ranks)")
    dry.add_argument("--json", action="store_true", help="with --dry-run: print one JSON object instead of the table")
    dry.add_argument("--dist", choices=("byted", "github", "uniform"), default=None,
                     help="with --dry-run and no --data: the synthetic length distribution (default byted); "
                          "--global-batch-tokens and --max-len left at their defaults mean 2,097,152 and 262,144 here")
    dry.add_argument("--dry-run-layers", type=int, default=1, metavar="L",
                     help="with --dry-run: decoder layers whose attention runs (default 1; the others' ring "
                          "traffic is the same and is counted, not run)")
    dry.add_argument("--dry-run-measure-memory", action="store_true",
                     help="with --dry-run: run the worst rank's step once more with the full model under torch's "
                          "MemTracker and show its tracked peak beside the formula's (slow at scale: one rank, "
                          "every layer)")
    add_config_arguments(p)
    with_strategy_table(p)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model, dtype=args.dtype, steps=args.steps, global_batch_tokens=args.global_batch_tokens,
        capacity=args.capacity, max_seq_len=args.max_seq_len, strategy=args.strategy, seed=args.seed, lr=args.lr,
        timeout_s=args.timeout, offload=args.offload, offload_ratio=args.offload_ratio, data=args.data, metrics=args.metrics,
        progress=not args.no_progress, tensorboard=args.tensorboard, zero=args.zero, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, min_lr=args.min_lr, recompute=args.recompute,
        export_hf=args.export_hf, hf_model=args.hf_model,
        aux_loss=args.aux_loss, aux_loss_coef=args.aux_loss_coef, z_loss_coef=args.z_loss_coef,
        tokenizer=args.tokenizer, text_field=args.text_field, dump_batches=args.dump_batches,
        gpus_per_node=args.gpus_per_node, ring_algo=args.ring_algo,
        on_nan=args.on_nan,
        save_dir=args.save_dir, save_every=args.save_every, keep=args.keep, async_save=args.async_save,
        resume=args.resume, max_restarts=args.max_restarts, schedule_steps=args.schedule_steps,
        plan_ahead=args.plan_ahead,
        run_config=getattr(args, EFFECTIVE_CONFIG, None),
        log_every=args.log_every, profile=args.profile, tp=args.tp, pp=args.pp,
        overrides=tuple(o.strip() for o in args.override.split(",") if o.strip()),
    )


def dry_run(args: argparse.Namespace) -> int:
    """``--dry-run``: hdp.runtime.dryrun (one process, no accelerator, no data files unless --data)."""
    from dataclasses import replace

    from hdp.runtime.dryrun.command import DEFAULT_MAX_LEN, DEFAULT_TOKENS, dry_run as run_dry

    config = config_from_args(args)
    if args.data is None and args.max_seq_len == DEFAULTS.max_seq_len:
        config = replace(config, max_seq_len=DEFAULT_MAX_LEN)
    if args.data is None and args.global_batch_tokens == DEFAULTS.global_batch_tokens:
        config = replace(config, global_batch_tokens=DEFAULT_TOKENS)
    if args.dry_run_layers < 1:
        raise ValueError(f"--dry-run-layers must be >= 1, got {args.dry_run_layers}")
    try:
        world = args.world_size if args.world_size is not None else args.nproc
        return run_dry(config, world, tokens=config.global_batch_tokens, dist_name=args.dist or "byted",
                       layers=args.dry_run_layers, as_json=args.json, measure_memory=args.dry_run_measure_memory)
    except PlanError as e:
        raise user_error(e, TRAIN_FLAGS) from None


def run(args: argparse.Namespace) -> int:
    from hdp.runtime.launch.spawn import launch

    if args.dry_run:
        return dry_run(args)
    if args.tensorboard:
        from hdp.runtime.observe.tensorboard import check_tensorboard_dir

        check_tensorboard_dir(args.tensorboard)
    try:
        return launch(config_from_args(args), args.nproc)
    except PlanError as e:
        raise user_error(e, TRAIN_FLAGS) from None
