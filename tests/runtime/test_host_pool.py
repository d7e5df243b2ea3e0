"""The pinned host pool reports exactly the host bytes it holds (issue 19, item 12).

PyTorch's pinned allocator rounds every request up to a power of two (``CachingHostAllocator.h``:
``PowerOf2Ceil``). Without a GPU the test stands in for it: ``torch.empty(..., pin_memory=True)``
is replaced by an allocation that records what that allocator would hold for the request.
"""

from __future__ import annotations

import pytest
import torch

from hdp.runtime.offload.host_pool import HostBufferPool

pytestmark = pytest.mark.timeout(30)


def power_of_two_ceil(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@pytest.fixture
def pinned_held(monkeypatch) -> list[int]:
    """Bytes the caching host allocator would hold, one entry per pinned allocation."""
    held: list[int] = []
    real_empty = torch.empty

    def empty(*args, pin_memory: bool = False, **kwargs):
        t = real_empty(*args, **kwargs)
        if pin_memory:
            held.append(power_of_two_ceil(t.numel() * t.element_size()))
        return t

    monkeypatch.setattr(torch, "empty", empty)
    return held


@pytest.mark.parametrize("slab_bytes", [None, 1 << 16])
def test_reported_bytes_equal_bytes_held(pinned_held, slab_bytes) -> None:
    pool = HostBufferPool(pin_memory=True) if slab_bytes is None else HostBufferPool(True, slab_bytes=slab_bytes)
    sizes = [3 * 2**14 + 1, 5000, 1 << 16, 70_001, 513, 3 * 2**17 + 7, 12, 40_000]
    bufs = [pool.acquire(n) for n in sizes]
    assert pinned_held and pool.reserved_bytes == sum(pinned_held)
    if slab_bytes is not None:
        assert pool.num_slabs == len(pinned_held) < len(sizes)  # carved, not one allocation per buffer
    for b in bufs:
        pool.release(b)
    assert pool.free_bytes == pool.reserved_bytes


def test_buffers_are_disjoint_aligned_and_reused(pinned_held) -> None:
    pool = HostBufferPool(pin_memory=True, slab_bytes=1 << 16)
    sizes = [1000, 20_000, 1 << 17, 700, 33_333, 20_000]
    for rounds in range(3):
        bufs = [pool.acquire(n) for n in sizes]
        spans = sorted((b.data.data_ptr(), b.data.data_ptr() + b.capacity) for b in bufs)
        assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))  # no two overlap
        assert all((b.data.data_ptr() - b.data.untyped_storage().data_ptr()) % 512 == 0 for b in bufs)
        assert all(b.capacity >= n for b, n in zip(bufs, sizes))
        for i, b in enumerate(bufs):
            b.data.fill_(i)
        assert all(int(b.data.min()) == int(b.data.max()) == i for i, b in enumerate(bufs))
        if rounds == 0:
            first = (pool.num_allocations, pool.num_slabs, pool.reserved_bytes)
        assert (pool.num_allocations, pool.num_slabs, pool.reserved_bytes) == first  # shapes repeat: no growth
        for b in bufs:
            pool.release(b)
    assert pool.reserved_bytes == sum(pinned_held)


def test_slab_size_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        HostBufferPool(pin_memory=False, slab_bytes=3 << 20)
