"""Memory a run can see: the model-state bytes every rank holds, the allocator's peak and, on an
accelerator, the device's own used bytes (``mem_get_info``: NCCL's per-peer buffers, the CUDA
context and the allocator's cache, which the allocator's figures do not count), maxed over ranks.

No collective of their own per step: ``local_memory`` gives this rank's values, which ride in the
plan check's MAX all-reduce at the start of the next step (``parallel.plan_check.check_same_plan``),
and ``memory_fields`` names the maxima. So a step's record holds the figures as of the end of the
step before it; ``memory_record`` (one small all-reduce) is for the last step and for tests.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from hdp.runtime.optim.zero import ShardedAdamW

NUM_VALUES = 3
"""Values per rank in ``local_memory``: state bytes, allocator peak, device used bytes (-1: none)."""


def peak_allocated_bytes(device: torch.device) -> int | None:
    """Peak bytes the allocator handed out on this rank's accelerator since the start; None on CPU."""
    if device.type == "cpu":
        return None
    return int(torch.accelerator.max_memory_allocated(device))


def device_used_bytes(device: torch.device) -> int | None:
    """Bytes in use on the device by its own count (total - free, every user of it); None on CPU."""
    if device.type == "cpu":
        return None
    free, total = torch.accelerator.get_memory_info(device)
    return int(total - free)


def local_memory(optimizer: ShardedAdamW, device: torch.device) -> list[int]:
    """This rank's ``[state bytes, allocator peak, device used]`` (-1 where the device has no such figure)."""
    peak, used = peak_allocated_bytes(device), device_used_bytes(device)
    return [optimizer.state_bytes(), -1 if peak is None else peak, -1 if used is None else used]


def memory_fields(maxima: list[int]) -> dict[str, int | None]:
    """The record's memory keys from the maxima over ranks of ``local_memory``.

    ``device_used_bytes`` is absent on CPU (no such figure), ``peak_memory_bytes`` is None there.
    """
    state, peak, used = maxima
    fields: dict[str, int | None] = {"state_bytes": state, "peak_memory_bytes": None if peak < 0 else peak}
    if used >= 0:
        fields["device_used_bytes"] = used
    return fields


def memory_record(optimizer: ShardedAdamW, device: torch.device, group: dist.ProcessGroup | None = None
                  ) -> dict[str, int | None]:
    """``state_bytes`` (largest over ranks), ``peak_memory_bytes`` (busiest rank; None on CPU) and, on an
    accelerator, ``device_used_bytes``: one MAX all-reduce of its own (not in the per-step hot loop)."""
    values = torch.tensor(local_memory(optimizer, device), dtype=torch.int64, device=device)
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=group)
    return memory_fields(values.tolist())
