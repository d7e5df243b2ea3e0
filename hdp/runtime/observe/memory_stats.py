"""Memory a run can see: the model-state bytes every rank holds and the accelerator's peak, maxed over ranks.

One small MAX all-reduce per step (two integers), after the step's own collectives: it carries metrics
only, so it never pairs with a training collective.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from hdp.runtime.optim.zero import ShardedAdamW


def peak_allocated_bytes(device: torch.device) -> int | None:
    """Peak bytes the allocator handed out on this rank's accelerator since the start; None on CPU."""
    if device.type == "cpu":
        return None
    return int(torch.accelerator.max_memory_allocated(device))


def memory_record(optimizer: ShardedAdamW, device: torch.device, group: dist.ProcessGroup | None = None
                  ) -> dict[str, int | None]:
    """``state_bytes`` (largest over ranks) and ``peak_memory_bytes`` (busiest rank; None on CPU)."""
    peak = peak_allocated_bytes(device)
    values = torch.tensor([optimizer.state_bytes(), -1 if peak is None else peak], dtype=torch.int64, device=device)
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=group)
    state, peak_max = (int(v) for v in values.tolist())
    return {"state_bytes": state, "peak_memory_bytes": None if peak_max < 0 else peak_max}
