"""Catch ranks that disagree about the plan before any collective can hang on it.

Every rank builds the step's plan itself (pure function of the lengths and the config). If one rank
built a different plan (other data, other flags, other code), ring peers would wait forever for
messages that never come; one all-reduce turns that into an immediate error.

The check is O(1) whatever the world size: one MAX all-reduce of ``[h, -h]`` for the plan's 60-bit
hash ``h`` gives the largest and the smallest hash over ranks, read with one host sync; they are
equal iff every rank holds the same plan. Only when they differ does an all_gather (the error path)
find which ranks hold which plan. Other per-rank maxima (the memory figures) ride in the same
all-reduce for free (``extra``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from hdp.plan.types import Plan
from hdp.runtime.parallel.peers import collective


def check_world_size(plan: Plan, world_size: int) -> None:
    if plan.num_ranks != world_size:
        raise ValueError(
            f"the plan is for {plan.num_ranks} ranks but {world_size} processes are running: "
            "plan for the number of processes you launch"
        )


def check_same_plan(plan: Plan, group: dist.ProcessGroup | None, device: torch.device,
                    extra: Sequence[int] = ()) -> list[int]:
    """All ranks must hold the plan with the same fingerprint; raises on every rank otherwise.

    Returns the maximum over ranks of each value of ``extra`` (every rank passes as many).
    Must be the first collective of the step: it is the one every rank reaches whatever its plan.
    """
    mine = int(plan.fingerprint[:15], 16)
    values = torch.tensor([mine, -mine, *extra], dtype=torch.int64, device=device)
    with collective("the plan check (all-reduce of plan fingerprints)"):
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=group)
    largest, neg_smallest, *maxima = values.tolist()  # the check's one host sync
    if largest != -neg_smallest:
        _name_different_plans(mine, group, device)
    return maxima


def _name_different_plans(mine: int, group: dist.ProcessGroup | None, device: torch.device) -> None:
    """The error path: which ranks hold which plan (an all_gather, O(world), only when they differ)."""
    world = dist.get_world_size(group)
    gathered = [torch.empty(1, dtype=torch.int64, device=device) for _ in range(world)]
    with collective("the plan check (all_gather of plan fingerprints)"):
        dist.all_gather(gathered, torch.tensor([mine], dtype=torch.int64, device=device), group=group)
    values = torch.cat(gathered).tolist()
    groups: dict[int, list[int]] = {}
    for r, v in enumerate(values):
        groups.setdefault(v, []).append(r)
    detail = "; ".join(f"ranks {rs} hold plan {v:015x}" for v, rs in groups.items())
    raise ValueError(f"ranks built different plans for this step ({detail}): every rank needs the same data, "
                     f"flags and code")
