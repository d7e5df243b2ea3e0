"""Catch ranks that disagree about the plan before any collective can hang on it.

Every rank builds the step's plan itself (pure function of the lengths and the config). If one rank
built a different plan (other data, other flags, other code), ring peers would wait forever for
messages that never come; one all_gather of a 60-bit hash turns that into an immediate error.
"""

from __future__ import annotations

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


def check_same_plan(plan: Plan, group: dist.ProcessGroup | None, device: torch.device) -> None:
    """All ranks must hold the plan with the same fingerprint; raises on every rank otherwise.

    Must be the first collective of the step: it is the one every rank reaches whatever its plan.
    """
    mine = torch.tensor([int(plan.fingerprint[:15], 16)], dtype=torch.int64, device=device)
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    with collective("the plan check (all_gather of plan fingerprints)"):
        dist.all_gather(gathered, mine, group=group)
    values = [int(t.item()) for t in gathered]
    if len(set(values)) != 1:
        groups: dict[int, list[int]] = {}
        for r, v in enumerate(values):
            groups.setdefault(v, []).append(r)
        detail = "; ".join(f"ranks {rs} hold plan {v:015x}" for v, rs in groups.items())
        raise ValueError(f"ranks built different plans for this step ({detail}): every rank needs the same data, "
                         f"flags and code")
