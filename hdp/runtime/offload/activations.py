"""Selective activation offloading: whole layers keep their saved tensors in host memory.

The planner decides, per micro-batch, how many layers offload (``MicroBatch.offload_layers``) and
the rule for which ones sits beside its memory formula (``hdp.plan.schedule.sharding.offloaded_layers``: the
first and last layers stay resident, the others are spread so each offloaded layer is followed by
resident ones). Layer j's device->host copy then hides under the forward of layer j + 1, and its
host->device prefetch, started when the backward enters layer j + 1, under that layer's backward.

Stream and event discipline (CUDA):
* pack: the copy stream waits for the compute stream (the tensor is produced there) and for the host
  buffer's ``ready`` event (its previous host->device read); the source tensor is ``record_stream``-ed
  on the copy stream so the allocator cannot reuse its memory before the copy lands.
* prefetch: device tensors are allocated on the compute stream; the prefetch stream waits for the
  compute stream (the allocation may reuse a block freed by queued kernels) and for the device->host
  event; one event per layer marks the copies done and becomes the host buffers' ``ready`` event.
* unpack: the compute stream waits for the layer's prefetch event before any kernel reads the tensor.
Nothing here synchronises the host with the device. On a CPU device the same path runs with plain
copies into separate host buffers, so the tests check bookkeeping and bit-exactness without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import ContextManager, Iterable, Iterator

import torch

from hdp.plan.schedule.sharding import offloaded_layers
from hdp.runtime.offload.host_pool import HostBuffer, HostBufferPool
from hdp.runtime.model.decoder import LayerContext
CUDA_MIN_BYTES = 1 << 20
"""On CUDA smaller saved tensors stay on the device: their copies are launch-bound and save little.
On CPU every tensor is copied (the path exists there to be checked, not to save memory)."""


@dataclass(slots=True)
class OffloadStats:
    """Counters of one micro-batch (``ActivationOffloader.stats`` is the last one's)."""

    offloaded_tensors: int = 0
    offloaded_bytes: int = 0
    deduplicated: int = 0
    """Saves of a tensor already offloaded by the same layer (e.g. the norm output read by q, k and v)."""
    skipped_params: int = 0
    skipped_small: int = 0
    prefetched_layers: int = 0
    late_fetches: int = 0
    """Layers whose backward began before their prefetch was issued (fetched then, still on the side stream)."""


class _Offloaded:
    """What autograd holds instead of a saved device tensor of an offloaded layer."""

    __slots__ = ("buffer", "host", "size", "stride", "dtype", "d2h_done", "h2d_done", "device_tensor")

    def __init__(self, buffer: HostBuffer, host: torch.Tensor, t: torch.Tensor, d2h_done: object) -> None:
        self.buffer: HostBuffer | None = buffer
        self.host: torch.Tensor | None = host
        self.size, self.stride, self.dtype = t.shape, t.stride(), t.dtype
        self.d2h_done, self.h2d_done = d2h_done, None
        self.device_tensor: torch.Tensor | None = None


class ActivationOffloader:
    """One rank's activation offloading, for the whole run: one host pool, reused by every micro-batch.

    ``with off.micro_batch(mb.offload_layers) as layer_context: loss = model(..., layer_context=...);
    loss.backward()``: the block must hold the forward *and* the backward; leaving it returns the host
    buffers to the pool. ``layer_context`` is None when nothing is offloaded.
    """

    def __init__(self, device: torch.device | str, num_layers: int, params: Iterable[torch.Tensor] = (), *,
                 min_bytes: int | None = None) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # tensors' devices are always indexed
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.num_layers = num_layers
        self._cuda = self.device.type == "cuda"
        self.min_bytes = (CUDA_MIN_BYTES if self._cuda else 0) if min_bytes is None else min_bytes
        self._param_storages = frozenset(p.untyped_storage().data_ptr() for p in params)
        self.pool = HostBufferPool(pin_memory=self._cuda)
        self.stats = OffloadStats()
        self.offloaded_bytes = 0
        """Bytes copied to the host so far (all micro-batches, all steps)."""
        self._streams: tuple[torch.cuda.Stream, torch.cuda.Stream] | None = None
        self._live: dict[int, list[_Offloaded]] | None = None  # layer -> handles not yet fetched
        self._handles: list[_Offloaded] = []
        self._entered: set[int] = set()
        self._seen: dict[tuple[int, int], tuple[torch.Tensor, _Offloaded]] = {}

    @contextlib.contextmanager
    def micro_batch(self, offload_layers: int) -> Iterator[LayerContext | None]:
        """Offload ``offload_layers`` layers (chosen by the planner's rule) of one micro-batch."""
        chosen = frozenset(offloaded_layers(offload_layers, self.num_layers))
        if not chosen:
            yield None
            return
        if self._live is not None:
            raise RuntimeError("micro-batches cannot nest: finish one's backward before the next forward")
        if self._cuda:
            self.pool.check_pinnable()  # fail before the step, not halfway through a forward
            if self._streams is None:
                self._streams = torch.cuda.Stream(self.device), torch.cuda.Stream(self.device)
        self.stats, self._live, self._entered = OffloadStats(), {}, set()
        # A resident layer just above an offloaded one needs hooks too: its backward starts the prefetch.
        hooked = chosen | {j + 1 for j in chosen if j + 1 < self.num_layers}

        def layer_context(i: int) -> ContextManager[None]:
            if self._live is None:
                raise RuntimeError("this micro-batch has ended; offloading hooks belong to one micro-batch")
            return self._layer(i, i in chosen) if i in hooked else contextlib.nullcontext()

        try:
            yield layer_context
        finally:
            self._end()

    def _end(self) -> None:
        """Return every host buffer; a later unpack of this micro-batch raises (no silent reuse)."""
        for h in self._handles:
            if h.buffer is not None:
                self.pool.release(h.buffer)
            h.buffer = h.host = None
        self.offloaded_bytes += self.stats.offloaded_bytes
        self._handles, self._live = [], None

    @contextlib.contextmanager
    def _layer(self, i: int, offload: bool) -> Iterator[None]:
        pack = functools.partial(self._pack, i) if offload else _keep
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, functools.partial(self._unpack, i)):
                yield
        finally:
            self._seen.clear()  # the strong references that made de-duplication by id() safe

    # -- forward --------------------------------------------------------------------------------------------
    def _pack(self, i: int, t: torch.Tensor) -> object:
        if not self._should_offload(t):
            return _keep(t)
        key = (id(t), t._version)
        seen = self._seen.get(key)
        if seen is not None:
            self.stats.deduplicated += 1
            return seen[1]
        handle = self._copy_out(t)
        self._seen[key] = (t, handle)
        assert self._live is not None
        self._live.setdefault(i, []).append(handle)
        return handle

    def _should_offload(self, t: torch.Tensor) -> bool:
        if (t.is_leaf and t.requires_grad) or t.untyped_storage().data_ptr() in self._param_storages:
            self.stats.skipped_params += 1
            return False
        if t.device != self.device or t.numel() == 0 or not _is_dense(t):
            return False  # other devices, empty tensors, views with gaps: kept where they are
        if t.numel() * t.element_size() < self.min_bytes:
            self.stats.skipped_small += 1
            return False
        return True

    def _copy_out(self, t: torch.Tensor) -> _Offloaded:
        nbytes = t.numel() * t.element_size()
        buf = self.pool.acquire(nbytes)
        host = buf.view(t.dtype, t.shape, t.stride(), t.numel())
        done = None
        if self._streams is not None:
            d2h = self._streams[0]
            d2h.wait_stream(torch.cuda.current_stream(self.device))  # t is produced on the compute stream
            if buf.ready is not None:
                d2h.wait_event(buf.ready)  # the buffer's previous host->device read
            with torch.cuda.stream(d2h):
                host.copy_(t, non_blocking=True)
            t.record_stream(d2h)  # t's memory is not reused until the copy has read it
            done = buf.ready = torch.cuda.Event()
            done.record(d2h)
        else:
            host.copy_(t)
        handle = _Offloaded(buf, host, t, done)
        self._handles.append(handle)
        self.stats.offloaded_tensors += 1
        self.stats.offloaded_bytes += nbytes
        return handle

    # -- backward -------------------------------------------------------------------------------------------
    def _unpack(self, i: int, packed: object) -> torch.Tensor:
        if i not in self._entered:  # first unpack of layer i: it must be here, and the layer below starts coming
            self._entered.add(i)
            if self._live and i in self._live:
                self.stats.late_fetches += 1
                self._fetch(self._live.pop(i))
            if self._live and i - 1 in self._live:
                self.stats.prefetched_layers += 1
                self._fetch(self._live.pop(i - 1))
        if isinstance(packed, torch.Tensor):
            return packed
        assert isinstance(packed, _Offloaded)
        if packed.device_tensor is None:
            raise RuntimeError("an offloaded activation was unpacked after its micro-batch ended (retain_graph or "
                               "a second backward outside the micro_batch block is not supported)")
        if packed.h2d_done is not None:
            torch.cuda.current_stream(self.device).wait_event(packed.h2d_done)
        return packed.device_tensor

    def _fetch(self, handles: list[_Offloaded]) -> None:
        outs = [torch.empty_strided(h.size, h.stride, dtype=h.dtype, device=self.device) for h in handles]
        if self._streams is None:
            for h, out in zip(handles, outs):
                h.device_tensor = out.copy_(h.host)  # type: ignore[arg-type]
            return
        h2d = self._streams[1]
        # Allocated on the compute stream: the blocks may have been freed by kernels still queued there.
        h2d.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(h2d):
            for h, out in zip(handles, outs):
                h2d.wait_event(h.d2h_done)  # type: ignore[arg-type]
                out.copy_(h.host, non_blocking=True)  # type: ignore[arg-type]
                out.record_stream(h2d)
        done = torch.cuda.Event()
        done.record(h2d)
        for h, out in zip(handles, outs):
            h.device_tensor, h.h2d_done = out, done
            assert h.buffer is not None
            h.buffer.ready = done  # the next writer of this host buffer waits for this read


def _keep(t: torch.Tensor) -> torch.Tensor:
    # detach(): returning t itself would make an output tensor own its grad_fn through the saved
    # variable, a reference cycle that Python's collector cannot see (the tensor would leak).
    return t.detach()


def _is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: some permutation of the dimensions is contiguous (span == numel)."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True
