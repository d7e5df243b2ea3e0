"""Reused host staging buffers for activation offloading.

Pinning host memory is slow (it maps and locks pages) and a fresh pinned tensor per saved activation
would dominate the step; a pageable buffer would make every device->host copy synchronous. So the
offloader draws flat byte buffers from this pool: buffers are grouped by a size class (eight classes
per power of two, at most 12.5% slack), carved the first time a class runs dry and handed out again
on every later step. With the same micro-batch shapes the pool stops growing after the first step.

Buffers are carved from large slabs, never pinned one by one: PyTorch's pinned (caching host)
allocator rounds every request up to a power of two (``PowerOf2Ceil`` in ``CachingHostAllocator.h``),
so a 2.1 GiB buffer would hold 4 GiB and a pool that counted its requests under-reported by up to 2x.
A slab is a power of two itself, so what the pool reports (``reserved_bytes``) is what it holds.

A buffer carries ``ready``: the event after which the last copy that touched it has finished. The
next writer must make its stream wait on it; the pool itself never synchronises the device.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

MIN_CLASS_BYTES = 512
ALIGN_BYTES = 512
"""Every buffer starts at a multiple of this in its slab (any dtype's view is aligned; DMA-friendly)."""
SLAB_BYTES = 1 << 26
"""Default slab: 64 MiB; a larger buffer gets a slab of the next power of two (its tail is carved later)."""


def size_class(nbytes: int) -> int:
    """Round ``nbytes`` up to one of eight steps per power of two (so shapes that differ a little share)."""
    if nbytes <= MIN_CLASS_BYTES:
        return MIN_CLASS_BYTES
    step = 1 << max(nbytes.bit_length() - 4, 0)  # 1/8 of the power of two below nbytes
    return -(-nbytes // step) * step


def power_of_two_ceil(nbytes: int) -> int:
    """The smallest power of two >= ``nbytes`` (what the pinned allocator holds for a request of ``nbytes``)."""
    return 1 << max(nbytes - 1, 0).bit_length()


@dataclass(eq=False, slots=True)
class HostBuffer:
    """One flat byte buffer of the pool, and the event its last copy completes at (None on CPU)."""

    data: torch.Tensor  # [capacity] uint8, a view into one slab
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


@dataclass(eq=False, slots=True)
class _Slab:
    data: torch.Tensor  # [power of two] uint8
    used: int = 0  # bytes carved from the front

    @property
    def left(self) -> int:
        return self.data.numel() - self.used


class HostBufferPool:
    """Host buffers kept for the life of a rank; one pool serves every micro-batch and step.

    ``pin_memory`` is True for CUDA devices (asynchronous DMA copies) and False on CPU, where the pool
    still supplies separate buffers so the copy path is exercised without a GPU.
    """

    def __init__(self, pin_memory: bool, slab_bytes: int = SLAB_BYTES) -> None:
        if slab_bytes < MIN_CLASS_BYTES or slab_bytes != power_of_two_ceil(slab_bytes):
            raise ValueError(f"slab_bytes must be a power of two >= {MIN_CLASS_BYTES}, got {slab_bytes}")
        self.pin_memory = pin_memory
        self.slab_bytes = slab_bytes
        self._free: dict[int, list[HostBuffer]] = defaultdict(list)
        self._slabs: list[_Slab] = []
        self.num_allocations = 0
        """Buffers ever carved: constant after the first step when shapes repeat."""

    @property
    def num_slabs(self) -> int:
        """Host allocations made (each one pinned at once)."""
        return len(self._slabs)

    @property
    def reserved_bytes(self) -> int:
        """Host bytes the pool holds (slabs: in use, free or not carved yet); exactly what was allocated."""
        return sum(s.data.numel() for s in self._slabs)

    @property
    def free_bytes(self) -> int:
        """Reserved bytes not in use: free buffers and the slabs' uncarved tails."""
        return (sum(b.capacity for bufs in self._free.values() for b in bufs)
                + sum(s.left for s in self._slabs))

    def acquire(self, nbytes: int) -> HostBuffer:
        """A buffer of at least ``nbytes``; its ``ready`` event must be waited on before writing."""
        cls = -(-size_class(nbytes) // ALIGN_BYTES) * ALIGN_BYTES  # every carve stays aligned, no gaps
        free = self._free[cls]
        buf = free.pop() if free else self._carve(cls)
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

    def _carve(self, nbytes: int) -> HostBuffer:
        slab = next((s for s in self._slabs if s.left >= nbytes), None)  # first fit: a handful of slabs
        if slab is None:
            slab = self._new_slab(max(self.slab_bytes, power_of_two_ceil(nbytes)))
        data = slab.data[slab.used:slab.used + nbytes]
        slab.used += nbytes
        self.num_allocations += 1
        return HostBuffer(data)

    def _new_slab(self, nbytes: int) -> _Slab:
        try:
            data = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin_memory)
        except RuntimeError as e:
            raise RuntimeError(
                f"cannot allocate {nbytes:,} bytes of pinned host memory for activation offloading ({e}); "
                "run without offloading (offload ratio 0 / no --offload) or raise the pinned-memory limit"
            ) from e
        slab = _Slab(data)
        self._slabs.append(slab)
        return slab
