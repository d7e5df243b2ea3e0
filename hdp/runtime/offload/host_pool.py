"""Reused host staging buffers for activation offloading.

Pinning host memory is slow (it maps and locks pages) and a fresh pinned tensor per saved activation
would dominate the step; a pageable buffer would make every device->host copy synchronous. So the
offloader draws flat byte buffers from this pool: buffers are grouped by a size class (eight classes
per power of two, at most 12.5% slack), allocated the first time a class runs dry and handed out again
on every later step. With the same micro-batch shapes the pool stops growing after the first step.

A buffer carries ``ready``: the event after which the last copy that touched it has finished. The
next writer must make its stream wait on it; the pool itself never synchronises the device.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

MIN_CLASS_BYTES = 512


def size_class(nbytes: int) -> int:
    """Round ``nbytes`` up to one of eight steps per power of two (so shapes that differ a little share)."""
    if nbytes <= MIN_CLASS_BYTES:
        return MIN_CLASS_BYTES
    step = 1 << max(nbytes.bit_length() - 4, 0)  # 1/8 of the power of two below nbytes
    return -(-nbytes // step) * step


@dataclass(eq=False, slots=True)
class HostBuffer:
    """One flat byte buffer of the pool, and the event its last copy completes at (None on CPU)."""

    data: torch.Tensor  # [capacity] uint8
    ready: object | None = None  # torch.cuda.Event of the last copy that read or wrote it
    in_use: bool = field(default=False)

    @property
    def capacity(self) -> int:
        return self.data.numel()

    def view(self, dtype: torch.dtype, size: torch.Size, stride: tuple[int, ...], numel: int) -> torch.Tensor:
        """The first ``numel`` elements as a tensor with the given (dense) layout."""
        nbytes = numel * dtype.itemsize
        assert nbytes <= self.capacity, "buffer smaller than its size class"
        return self.data[:nbytes].view(dtype).as_strided(size, stride)


class HostBufferPool:
    """Host buffers kept for the life of a rank; one pool serves every micro-batch and step.

    ``pin_memory`` is True for CUDA devices (asynchronous DMA copies) and False on CPU, where the pool
    still supplies separate buffers so the copy path is exercised without a GPU.
    """

    def __init__(self, pin_memory: bool) -> None:
        self.pin_memory = pin_memory
        self._free: dict[int, list[HostBuffer]] = defaultdict(list)
        self.num_allocations = 0
        """Buffers ever allocated: constant after the first step when shapes repeat."""
        self.reserved_bytes = 0
        """Host bytes held by the pool (in use or free)."""

    @property
    def free_bytes(self) -> int:
        return sum(b.capacity for bufs in self._free.values() for b in bufs)

    def acquire(self, nbytes: int) -> HostBuffer:
        """A buffer of at least ``nbytes``; its ``ready`` event must be waited on before writing."""
        cls = size_class(nbytes)
        free = self._free[cls]
        buf = free.pop() if free else self._allocate(cls)
        buf.in_use = True
        return buf

    def release(self, buf: HostBuffer) -> None:
        """Return a buffer; ``buf.ready`` must already cover every copy still in flight on it."""
        assert buf.in_use, "buffer released twice"
        buf.in_use = False
        self._free[buf.capacity].append(buf)

    def check_pinnable(self) -> None:
        """Raise RuntimeError now, before a step starts, when pinned memory cannot be allocated."""
        if self.pin_memory:
            self.release(self.acquire(MIN_CLASS_BYTES))

    def _allocate(self, nbytes: int) -> HostBuffer:
        try:
            data = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin_memory)
        except RuntimeError as e:
            raise RuntimeError(
                f"cannot allocate {nbytes:,} bytes of pinned host memory for activation offloading ({e}); "
                "run without offloading (offload ratio 0 / no --offload) or raise the pinned-memory limit"
            ) from e
        self.num_allocations += 1
        self.reserved_bytes += nbytes
        return HostBuffer(data)
