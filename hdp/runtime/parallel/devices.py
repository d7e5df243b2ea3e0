"""Which device a rank trains on, and the check that every rank chose the same kind, before any collective.

Spawned locally, the launcher decides once for all ranks (accelerators when there is one per rank,
else CPU). Under torchrun each rank decides alone, so a silent CPU fallback on one rank (LOCAL_RANK
beyond the devices it can see, as with one GPU per task under SLURM) leaves ranks on different
backends, and the first collective hangs. There an accelerator that is expected but missing is a
one-line error (``strict``), and the ranks compare device kinds on the rendezvous store (O(1)
operations per rank), before the process group exists.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def pick_device(local_rank: int, use_accelerator: bool, strict: bool = False) -> torch.device:
    """Local accelerator ``local_rank`` when asked for and present, else CPU (gloo). No device literals.

    ``strict`` (torchrun): an accelerator exists but ``local_rank`` is not among the visible ones:
    ``ValueError`` instead of CPU.
    """
    if not (use_accelerator and torch.accelerator.is_available()):
        return torch.device("cpu")
    acc = torch.accelerator.current_accelerator()
    assert acc is not None
    count = torch.accelerator.device_count()
    if local_rank >= count:
        if strict:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            shown = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
            raise ValueError(f"LOCAL_RANK {local_rank} but this process sees {count} {acc.type} device(s){shown}: "
                             f"start at most {count} processes per node (torchrun --nproc-per-node {count}), or "
                             "let every task see all of its node's devices")
        return torch.device("cpu")
    torch.accelerator.set_device_index(local_rank)
    return torch.device(acc.type, local_rank)


def check_devices_agree(store: dist.Store, world_size: int, device_type: str, timeout_s: float) -> None:
    """Every rank must train on an accelerator, or none; raises ``ValueError`` on every rank otherwise.

    Each rank adds itself to two counters; the last to arrive sets ``done``, the others wait for it
    on the store (no polling), then all read the count of accelerated ranks.
    """
    accelerated = 0 if device_type == "cpu" else 1
    store.add("accelerated", accelerated)
    if store.add("arrived", 1) == world_size:
        store.set("done", "1")
    store.wait(["done"], datetime.timedelta(seconds=timeout_s))
    total = store.add("accelerated", 0)
    if 0 < total < world_size:
        raise ValueError(f"{total} of {world_size} ranks found an accelerator and {world_size - total} did not (this "
                         f"rank: {device_type}): give every rank a visible device, or none (all on CPU)")
