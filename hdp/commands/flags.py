"""Flags shared by the subcommands, and how each command names the planner's parameters.

One concept has one flag name in every command; the spellings that came before stay as aliases
in every command that has the flag (``--max-seq-len`` for ``--max-len``, ``--stages`` for ``--pp``,
``--cost-model`` for ``--profile``, ``--nproc`` for ``--ranks``, ``--tokens`` for
``--global-batch-tokens``). Where commands' defaults differ (plan and simulate describe a
production cluster, train runs on this machine) each help says so (tests/commands/test_vocabulary.py).
The library's errors name ``make_plan``'s parameters in braces (``hdp.plan.PlanError``);
``user_error`` spells them as the running command's flags.
"""

from __future__ import annotations

import argparse
from typing import Mapping

from hdp.plan.cost.model_config import DEFAULT_MODEL, PRESETS, ModelConfig, get_model
from hdp.plan.schedule.sharding import PlanError
from hdp.plan.strategies import strategy_table

PLAN_FLAGS = {"num_ranks": "--ranks", "capacity": "--capacity", "max_len": "--max-len"}
SIMULATE_FLAGS = {"num_ranks": "--gpus (or --ranks)", "capacity": "--capacity", "max_len": "--max-len",
                  "gpus": "--gpus", "tp": "--tp", "pp": "--pp", "gpus_per_node": "--gpus-per-node",
                  "nvlink_gbps": "--nvlink-gbps", "inter_gbps": "--inter-gbps",
                  "nvlink_latency_s": "--nvlink-latency-us", "inter_latency_s": "--inter-latency-us"}
TRAIN_FLAGS = {"num_ranks": "--nproc", "capacity": "--capacity", "max_len": "--max-seq-len"}


def user_error(e: PlanError, flags: Mapping[str, str]) -> ValueError:
    """The planner's error with the command's flag names."""
    return ValueError(e.message(flags))


def add_max_len(p: argparse.ArgumentParser, help_text: str, default: int | None = None, dest: str = "max_len") -> None:
    p.add_argument("--max-len", "--max-seq-len", dest=dest, type=int, default=default, metavar="L", help=help_text)


def add_global_batch_tokens(p: argparse.ArgumentParser, help_text: str, default: int, dest: str) -> None:
    p.add_argument("--global-batch-tokens", "--tokens", dest=dest, type=int, default=default, metavar="T",
                   help=help_text)


def add_ranks(p: argparse.ArgumentParser, help_text: str, default: int | None, dest: str = "ranks",
              group: argparse._ActionsContainer | None = None) -> None:
    (group or p).add_argument("--ranks", "--nproc", dest=dest, type=int, default=default, metavar="N", help=help_text)


def add_pp(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--pp", "--stages", dest="pp", type=int, default=1, metavar="P", help=help_text)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, choices=list(PRESETS),
                   help=f"model preset (default {DEFAULT_MODEL}, a production model the shipped profile was measured "
                        "for; hdp train defaults to tiny, which trains on a CPU)")
    p.add_argument("--profile", "--cost-model", dest="profile", metavar="PROFILE", default=None,
                   help="device profile: a shipped name or a JSON file (default: the shipped H100 SXM 80GB calibration)")


def add_hf_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf-model", default=None, metavar="DIR",
                   help="the shape of this local Hugging Face causal LM (its config.json) instead of --model, as "
                        "hdp train --hf-model trains it")


def model_from_args(args: argparse.Namespace) -> ModelConfig:
    """``--hf-model``'s shape from its config.json (json only: no torch, no transformers), else ``--model``."""
    if getattr(args, "hf_model", None) is not None:
        from hdp.plan.cost.hf_config import load_hf_shape

        return load_hf_shape(args.hf_model)
    return get_model(args.model)


def add_memory_arguments(p: argparse.ArgumentParser) -> None:
    """What the derived capacity and the cost model assume of the runtime (``hdp train``'s own flags)."""
    p.add_argument("--zero", type=int, choices=(0, 1, 2), default=1,
                   help="optimizer-state sharding the runtime uses (hdp train --zero; default 1, what hdp train "
                        "uses on more than one rank)")
    p.add_argument("--recompute", choices=("none", "full"), default="none",
                   help="full: layers keep only their input and recompute in backward (more capacity, "
                        "an extra forward in the cost model; default none)")


DEFAULT_RING_ALGO = "two-level"
"""The best ring algorithm measured (benchmarks/ring_targets.py; README)."""


def add_topology_arguments(p: argparse.ArgumentParser, gpus_per_node: bool = True) -> None:
    """``--gpus-per-node`` and ``--ring-algo``: node-aware ring placement and the ring algorithm."""
    from hdp.plan.types import RING_ALGOS

    if gpus_per_node:
        p.add_argument("--gpus-per-node", type=int, default=8,
                       help="GPUs per node: rings are placed by node and ring steps across nodes use NICs (default 8, "
                            "an 8-GPU node; hdp train defaults to the node it runs on)")
    p.add_argument("--ring-algo", choices=RING_ALGOS, default=DEFAULT_RING_ALGO,
                   help="how rings move K/V: flat (one ring), two-level (ring inside each node + parallel rings "
                        "across nodes over every NIC), bidirectional (half the KV heads each way); where it does "
                        f"not apply a ring falls back to flat (default {DEFAULT_RING_ALGO}, the best measured; "
                        "hdp train runs what its plan says)")


def check_memory_arguments(args: argparse.Namespace) -> None:
    if args.recompute == "full" and getattr(args, "offload", False):
        raise ValueError("--recompute full keeps only each layer's input, so offloading has nothing to move: "
                         "drop --offload or use --recompute none")


def with_strategy_table(p: argparse.ArgumentParser) -> None:
    """Print the strategy table under ``--help``."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = strategy_table()
