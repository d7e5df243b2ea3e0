"""Selective activation offloading for one micro-batch: whole layers keep their saved tensors on the host.

The planner (hdp.plan.sharding.place) picks a ratio r = j / (l - 2) per micro-batch. Of a rank's l
layers the first and the last stay resident; j of the l - 2 middle layers copy their saved activations
to host memory during the forward and bring them back just before their backward (DESIGN.md: device
memory (2 + (1 - r)(l - 2)) * Act(s) instead of l * Act(s)).

Which layers: spread evenly, each offloaded layer j followed by resident layers (``offloaded_layers``).
Layer j's device->host copy then hides under the forward of layer j + 1 and its host->device prefetch,
started when the backward enters layer j + 1, hides under that layer's backward. Because the highest
offloaded layer sits below the last layer whenever r < 1, its prefetch starts after the last layer's
activations were freed, so the device peak stays at the formula's value. Offloading the last middle
layers first would instead prefetch layer l - 2 while layer l - 1 still holds its activations (one
layer above the formula at the start of the backward) and leave the last copies in flight at the end of
the forward.

Stream and event discipline (CUDA):
* pack: the copy stream waits for the compute stream (the tensor is produced there) and for the host
  buffer's ``ready`` event (its previous host->device read); the source tensor is ``record_stream``-ed
  on the copy stream so the allocator cannot reuse its memory before the copy lands.
* prefetch: device tensors are allocated on the compute stream; the prefetch stream waits for the
  compute stream (the allocation may reuse a block freed by queued kernels) and for the device->host
  event; one event per layer marks the copies done and becomes the host buffers' ``ready`` event.
* unpack: the compute stream waits for the layer's prefetch event before any kernel reads the tensor.
Nothing here synchronises the host with the device.

On a CPU device the same path runs with plain copies into separate host buffers, so the tests check
the bookkeeping and bit-exactness without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Iterator, Literal

import torch

from hdp.runtime.host_pool import HostBuffer, HostBufferPool

OffloadMode = Literal["layers", "save_on_cpu"]
"""``layers``: this module's selective offloading. ``save_on_cpu``: PyTorch's baseline that copies every
saved tensor of every layer synchronously (torch.autograd.graph.save_on_cpu)."""
DEFAULT_MIN_BYTES = 1 << 20
"""Smaller saved tensors stay on the device: their copies are launch-bound and save little memory."""


def num_offloaded_layers(offload_ratio: float, num_layers: int) -> int:
    """round(r * (l - 2)): the planner's ratios are whole layers, j / (l - 2)."""
    return int(offload_ratio * max(num_layers - 2, 0) + 0.5)


def offloaded_layers(offload_ratio: float, num_layers: int) -> tuple[int, ...]:
    """The middle layers whose activations go to the host, spread so each is followed by resident ones.

    Layer 1 + floor(t * (l - 2) / k) for t < k: the gaps fall above each offloaded layer, which is
    where the copies hide (forward of the next layer, backward of the next layer).
    """
    check_ratio(offload_ratio)
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    k = num_offloaded_layers(offload_ratio, num_layers)
    middle = num_layers - 2
    return tuple(1 + (t * middle) // k for t in range(k))


def check_ratio(offload_ratio: float) -> None:
    if isinstance(offload_ratio, bool) or not isinstance(offload_ratio, (int, float)) or not (0.0 <= offload_ratio <= 1.0):
        raise ValueError(f"offload ratio {offload_ratio!r} is outside [0, 1]; use the plan's micro-batch offload_ratio")


@dataclass(frozen=True, slots=True)
class OffloadPlan:
    """Which of a rank's layers offload for one micro-batch (pure data, no device state)."""

    offload_ratio: float
    num_layers: int
    layers: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", offloaded_layers(self.offload_ratio, self.num_layers))

    def host_bytes(self, act_bytes_per_layer: float) -> int:
        """Host memory the plan needs for activations of ``act_bytes_per_layer`` per layer."""
        return int(len(self.layers) * act_bytes_per_layer)


@dataclass(slots=True)
class OffloadStats:
    offloaded_tensors: int = 0
    offloaded_bytes: int = 0
    deduplicated: int = 0
    """Saves of a tensor already offloaded by the same layer (e.g. the norm output read by q, k and v)."""
    skipped_params: int = 0
    skipped_small: int = 0
    skipped_other: int = 0
    """Other devices, non-dense views, empty tensors: kept on the device."""
    prefetched_layers: int = 0
    late_fetches: int = 0
    """Layers whose backward began before their prefetch was issued (fetched then, still on the side stream)."""


def available_host_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, or None where it cannot be read (no check then)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: some permutation of the dimensions is contiguous (span == numel)."""
    expected = 1
    dims = sorted(((st, s) for s, st in zip(t.shape, t.stride()) if s != 1))
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _with_index(device: torch.device) -> torch.device:
    """cuda -> cuda:<current>, so comparing it with a tensor's device (always indexed) works."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


class _Offloaded:
    """What autograd holds instead of a saved device tensor of an offloaded layer."""

    __slots__ = ("layer", "buffer", "host", "size", "stride", "dtype", "d2h_done", "h2d_done", "device_tensor",
                 "released", "__weakref__")

    def __init__(self, layer: int, buffer: HostBuffer, host: torch.Tensor, t: torch.Tensor, d2h_done: object) -> None:
        self.layer = layer
        self.buffer: HostBuffer | None = buffer
        self.host: torch.Tensor | None = host
        self.size = t.shape
        self.stride = t.stride()
        self.dtype = t.dtype
        self.d2h_done = d2h_done
        self.h2d_done: object | None = None
        self.device_tensor: torch.Tensor | None = None
        self.released = False


class ActivationOffloader:
    """Offloads the saved activations of one micro-batch; use once per micro-batch, as a context manager.

    ``with ActivationOffloader(mb.offload_ratio, num_layers, device, pool=pool, params=model.parameters()) as off:
    loss = model(..., layer_context=off.layer_context); loss.backward()``. Leaving the block returns the
    host buffers to ``pool`` (keep one pool per rank so they are reused across micro-batches and steps).
    Checks that can fail (ratio, pinned memory, host memory) run in the constructor, before the step.
    """

    def __init__(
        self,
        offload_ratio: float,
        num_layers: int,
        device: torch.device | str,
        *,
        pool: HostBufferPool | None = None,
        params: Iterable[torch.Tensor] = (),
        mode: OffloadMode = "layers",
        min_bytes: int = DEFAULT_MIN_BYTES,
        act_bytes_per_layer: float | None = None,
        prefetch_distance: int = 1,
    ) -> None:
        check_ratio(offload_ratio)
        if mode not in ("layers", "save_on_cpu"):
            raise ValueError(f"unknown offload mode {mode!r}; choose 'layers' or 'save_on_cpu'")
        if prefetch_distance < 1:
            raise ValueError(f"prefetch_distance must be >= 1, got {prefetch_distance}")
        self.plan = OffloadPlan(offload_ratio, num_layers)
        self.mode: OffloadMode = mode
        self.device = _with_index(torch.device(device))
        self.min_bytes = min_bytes
        self.prefetch_distance = prefetch_distance
        self.stats = OffloadStats()
        self._cuda = self.device.type == "cuda"
        offloads = mode == "save_on_cpu" or bool(self.plan.layers)
        if offloads and self._cuda and not torch.cuda.is_available():
            raise RuntimeError(f"offloading to {self.device} requested but CUDA is not available")
        self.pool = pool if pool is not None else HostBufferPool(pin_memory=self._cuda)
        if self.pool.pin_memory != self._cuda:
            raise ValueError(f"the host pool has pin_memory={self.pool.pin_memory} but the device is {self.device}: "
                             "pin host buffers exactly for CUDA devices")
        if offloads and self._cuda:
            self.pool.check_pinnable()
        if offloads and act_bytes_per_layer is not None:
            layers = num_layers if mode == "save_on_cpu" else len(self.plan.layers)
            self._check_host_memory(int(layers * act_bytes_per_layer))
        self._offloaded = frozenset(self.plan.layers) if mode == "layers" else frozenset()
        # Resident layers just above an offloaded one need hooks too: their backward starts the prefetch.
        self._hooked = frozenset(j + d for j in self._offloaded for d in range(prefetch_distance + 1)
                                 if j + d < num_layers)
        self._param_storages = frozenset(p.untyped_storage().data_ptr() for p in params)
        self._pending: dict[int, list[_Offloaded]] = {}
        self._entered: set[int] = set()
        self._buffers: list[tuple[HostBuffer, weakref.ref[_Offloaded]]] = []
        self._seen: dict[tuple[int, int], tuple[torch.Tensor, _Offloaded]] = {}
        self._closed = False
        if self._cuda and self._offloaded:
            self._d2h = torch.cuda.Stream(self.device)
            self._h2d = torch.cuda.Stream(self.device)

    def _check_host_memory(self, needed: int) -> None:
        """Fail before the step, not halfway through a forward, when the host cannot hold the copies."""
        available = available_host_bytes()
        if available is None:
            return
        reusable = self.pool.free_bytes  # already allocated by earlier micro-batches
        if needed > available + reusable:
            raise RuntimeError(
                f"offloading needs about {needed / 2**30:.1f} GiB of host memory for this micro-batch but only "
                f"{(available + reusable) / 2**30:.1f} GiB are available: lower the offload ratio (plan without "
                "--offload or with a smaller capacity) or free host memory")

    # -- the model's hook ---------------------------------------------------------------------------------
    def layer_context(self, i: int) -> ContextManager[None]:
        """The context layer ``i``'s forward runs in (pass the bound method as the model's layer_context)."""
        if not 0 <= i < self.plan.num_layers:
            raise IndexError(f"layer {i} outside 0..{self.plan.num_layers - 1}")
        if self._closed:
            raise RuntimeError("this ActivationOffloader's micro-batch has ended; make one per micro-batch")
        if self.mode == "save_on_cpu":
            return torch.autograd.graph.save_on_cpu(pin_memory=self._cuda)
        if i not in self._hooked:
            return contextlib.nullcontext()
        return self._layer(i)

    @contextlib.contextmanager
    def _layer(self, i: int) -> Iterator[None]:
        hooks = torch.autograd.graph.saved_tensors_hooks(functools.partial(self._pack, i),
                                                         functools.partial(self._unpack, i))
        try:
            with hooks:
                yield
        finally:
            self._seen.clear()  # the strong references that made de-duplication by id() safe

    # -- micro-batch lifetime ----------------------------------------------------------------------------
    def __enter__(self) -> ActivationOffloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Return every host buffer to the pool; later unpacks of this micro-batch raise (no silent reuse)."""
        if self._closed:
            return
        self._closed = True
        for buf, ref in self._buffers:
            handle = ref()
            if handle is not None:
                handle.released = True
                handle.host = None
                handle.buffer = None
            self.pool.release(buf)
        self._buffers.clear()
        self._pending.clear()

    # -- forward --------------------------------------------------------------------------------------------
    def _pack(self, i: int, t: torch.Tensor) -> object:
        if i not in self._offloaded or not self._should_offload(t):
            # detach(): returning t itself would make an output tensor own its grad_fn through the saved
            # variable, a reference cycle that Python's collector cannot see (the tensor would leak).
            return t.detach()
        key = (id(t), t._version)
        seen = self._seen.get(key)
        if seen is not None:
            self.stats.deduplicated += 1
            return seen[1]
        handle = self._copy_out(i, t)
        self._seen[key] = (t, handle)
        self._pending.setdefault(i, []).append(handle)
        return handle

    def _should_offload(self, t: torch.Tensor) -> bool:
        if isinstance(t, torch.nn.Parameter) or (t.is_leaf and t.requires_grad) or (
                t.untyped_storage().data_ptr() in self._param_storages):
            self.stats.skipped_params += 1
            return False
        if t.device != self.device or t.numel() == 0 or not _is_dense(t):
            self.stats.skipped_other += 1
            return False
        if t.numel() * t.element_size() < self.min_bytes:
            self.stats.skipped_small += 1
            return False
        return True

    def _copy_out(self, i: int, t: torch.Tensor) -> _Offloaded:
        numel = t.numel()
        buf = self.pool.acquire(numel * t.element_size())
        host = buf.view(t.dtype, t.shape, t.stride(), numel)
        if self._cuda:
            compute = torch.cuda.current_stream(self.device)
            self._d2h.wait_stream(compute)  # t is produced by kernels queued on the compute stream
            if buf.ready is not None:
                self._d2h.wait_event(buf.ready)  # the buffer's previous host->device read
            with torch.cuda.stream(self._d2h):
                host.copy_(t, non_blocking=True)
            t.record_stream(self._d2h)  # t's memory is not reused until the copy has read it
            done = torch.cuda.Event()
            done.record(self._d2h)
            buf.ready = done
        else:
            host.copy_(t)
            done = None
        handle = _Offloaded(i, buf, host, t, done)
        self._buffers.append((buf, weakref.ref(handle)))
        self.stats.offloaded_tensors += 1
        self.stats.offloaded_bytes += numel * t.element_size()
        return handle

    # -- backward -------------------------------------------------------------------------------------------
    def _unpack(self, i: int, packed: object) -> torch.Tensor:
        if i not in self._entered:
            self._enter_backward(i)
        if isinstance(packed, torch.Tensor):
            return packed
        assert isinstance(packed, _Offloaded)
        if packed.released:
            raise RuntimeError(
                "an offloaded activation was unpacked after its micro-batch ended (retain_graph or a second "
                "backward outside the ActivationOffloader block is not supported)")
        if packed.device_tensor is None:  # its layer was fetched without it (should not happen): fetch now
            self._fetch([packed])
        assert packed.device_tensor is not None
        if self._cuda:
            torch.cuda.current_stream(self.device).wait_event(packed.h2d_done)
        return packed.device_tensor

    def _enter_backward(self, i: int) -> None:
        """First unpack of layer i: make sure it is on the device and prefetch the layers just below."""
        self._entered.add(i)
        if i in self._pending:
            self.stats.late_fetches += 1
            self._fetch_layer(i)
        for j in range(i - 1, i - 1 - self.prefetch_distance, -1):
            if j in self._pending:
                self.stats.prefetched_layers += 1
                self._fetch_layer(j)

    def _fetch_layer(self, j: int) -> None:
        self._fetch(self._pending.pop(j))

    def _fetch(self, handles: list[_Offloaded]) -> None:
        live = [h for h in handles if not h.released and h.device_tensor is None]
        if not live:
            return
        outs = [torch.empty_strided(h.size, h.stride, dtype=h.dtype, device=self.device) for h in live]
        if not self._cuda:
            for h, out in zip(live, outs):
                out.copy_(h.host)  # type: ignore[arg-type]
                h.device_tensor = out
            return
        # Allocated on the compute stream: the blocks may have been freed by kernels still queued there.
        self._h2d.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._h2d):
            for h, out in zip(live, outs):
                self._h2d.wait_event(h.d2h_done)  # type: ignore[arg-type]
                out.copy_(h.host, non_blocking=True)  # type: ignore[arg-type]
                out.record_stream(self._h2d)
        done = torch.cuda.Event()
        done.record(self._h2d)
        for h, out in zip(live, outs):
            h.device_tensor = out
            h.h2d_done = done
            assert h.buffer is not None
            h.buffer.ready = done  # the next writer of this host buffer waits for this read


def no_offload(i: int) -> ContextManager[None]:
    """A layer_context that does nothing (the model's default when it is given None)."""
    return contextlib.nullcontext()


LayerContext = Callable[[int], ContextManager[None]]


class OffloadSession:
    """One rank's offloading across micro-batches and steps: one host pool, reused by all of them.

    ``scope(ratio, num_tokens)`` wraps one micro-batch's forward *and* backward and yields the
    ``layer_context`` for the model (``None`` when nothing is offloaded). ``force_ratio`` overrides the
    planner's per-micro-batch ratio (tests and benchmarks: it exercises the copy path on every
    micro-batch, including on CPU where the planner would rarely offload a tiny model).
    """

    def __init__(self, params: Iterable[torch.Tensor], device: torch.device, num_layers: int, *,
                 act_bytes_per_token_layer: float | None = None, force_ratio: float | None = None,
                 min_bytes: int = DEFAULT_MIN_BYTES) -> None:
        if force_ratio is not None:
            check_ratio(force_ratio)
        self.params = list(params)
        self.device = device
        self.num_layers = num_layers
        self.act_bytes_per_token_layer = act_bytes_per_token_layer
        self.force_ratio = force_ratio
        self.min_bytes = 0 if force_ratio is not None else min_bytes  # forced: copy everything we may
        self.pool = HostBufferPool(pin_memory=device.type == "cuda")
        self.offloaded_bytes = 0
        """Bytes this rank copied to the host so far (all micro-batches, all steps)."""

    @contextlib.contextmanager
    def scope(self, offload_ratio: float, num_tokens: int) -> Iterator[LayerContext | None]:
        ratio = self.force_ratio if self.force_ratio is not None else offload_ratio
        if num_offloaded_layers(ratio, self.num_layers) == 0:
            yield None
            return
        act = None if self.act_bytes_per_token_layer is None else self.act_bytes_per_token_layer * num_tokens
        with ActivationOffloader(ratio, self.num_layers, self.device, pool=self.pool, params=self.params,
                                 min_bytes=self.min_bytes, act_bytes_per_layer=act) as off:
            yield off.layer_context
        self.offloaded_bytes += off.stats.offloaded_bytes
