"""What one rank asks of torch.distributed, op by op, and how often it makes the host wait.

``Recorder`` wraps the ``torch.distributed`` functions the runtime calls (batched and blocking P2P,
the collectives) while it is installed: each call appends an ``Op`` to the current rank's list and
completes at once. The runtime is not changed or told: it calls ``dist.batch_isend_irecv`` /
``dist.all_reduce`` as in a real run, on the fake process group that gives each rank its rank,
world size and groups. The calls do not go on to the fake group: its backend takes no ``meta``
tensors, and the dry run's tensors are meta (FakeTensorMode costs ~1 ms per op on a 2-core machine,
meta ~20 us); the group would not move data anyway.

``HostSyncs`` counts the calls that copy a device value to the host (``item``, ``tolist``,
``__bool__``, ``__float__``, ``__int__``, ``cpu``): on a GPU each one drains the stream. A meta
tensor has no value, so it answers zeros (a plan check then sees equal fingerprints, a loss of 0 is
finite), which is all the control flow needs; ``pin_memory`` (no accelerator here) returns its input.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

P2P_KINDS = ("send", "recv")

COLLECTIVES: dict[str, tuple[str | None, str]] = {
    # name: (the argument whose numel every member must agree on, the group argument)
    "all_reduce": ("tensor", "group"),
    "all_gather": ("tensor", "group"),
    "all_gather_single": ("input_tensor", "group"),
    "all_gather_into_tensor": ("input_tensor", "group"),
    "reduce_scatter_single": ("input", "group"),
    "reduce_scatter_tensor": ("input", "group"),
    "broadcast": ("tensor", "group"),
    "reduce": ("tensor", "group"),
    "all_to_all_single": ("input", "group"),
    "barrier": (None, "group"),
    "all_gather_object": (None, "group"),
    "broadcast_object_list": (None, "group"),
}


@dataclass(slots=True)
class Op:
    """One call: a P2P ``send``/``recv`` (posted), a ``wait`` on one, a collective, or a ring ``phase``."""

    kind: str
    peer: int = -1
    """P2P: the other end's global rank."""
    group: tuple[int, ...] | None = None
    """The process group's global ranks (None: the default group, every rank)."""
    numel: int = 0
    dtype: str = ""
    tag: int = 0
    ref: int = -1
    """wait: the index, in this rank's list, of the op it waits for."""
    where: str = ""
    """What the runtime was doing (e.g. "ring 3 forward"), for naming errors."""
    key: Any = None
    """phase: the ring template it stands for (``rings.Template``) and its instance."""

    def describe(self) -> str:
        size = f"{self.numel:,} x {self.dtype}" if self.dtype else ""
        if self.kind in P2P_KINDS:
            to = "to" if self.kind == "send" else "from"
            return f"{self.kind} {to} rank {self.peer} ({size}, tag {self.tag})"
        return f"{self.kind} ({size})" if size else self.kind


_DTYPES: dict[torch.dtype, str] = {}


def _dtype(t: torch.Tensor) -> str:
    name = _DTYPES.get(t.dtype)
    if name is None:
        name = _DTYPES[t.dtype] = str(t.dtype).removeprefix("torch.")
    return name


class _Work:
    """A completed work whose ``wait`` is recorded (the matcher needs to know what blocks when)."""

    def __init__(self, recorder: "Recorder", refs: list[int]) -> None:
        self._recorder, self._refs = recorder, refs

    def wait(self, timeout: Any = None) -> bool:
        for ref in self._refs:
            self._recorder.append(Op("wait", ref=ref))
        self._refs = []
        return True

    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True

    def exception(self) -> None:
        return None


class Recorder:
    """Records the current rank's distributed calls into ``ops`` while installed (``with recorder:``)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.where = ""
        self.sink: list[Op] | None = None
        """Where ops go instead of ``ops`` (a ring template being recorded); None: ``ops``."""
        self._saved: dict[str, Callable] = {}
        self._groups: dict[Any, tuple[int, ...]] = {}
        """Group -> its global ranks, for the current rank's groups (``reset`` between ranks)."""

    def reset(self) -> None:
        """A new rank: no ops yet, and its process groups are new objects."""
        self.ops = []
        self._groups = {}

    def append(self, op: Op) -> int:
        target = self.ops if self.sink is None else self.sink
        op.where = op.where or self.where
        target.append(op)
        return len(target) - 1

    # -- installation ----------------------------------------------------------------------------
    def __enter__(self) -> "Recorder":
        for name in (*COLLECTIVES, "batch_isend_irecv", "send", "recv", "isend", "irecv"):
            if hasattr(dist, name):
                self._saved[name] = getattr(dist, name)
        dist.batch_isend_irecv = self._batch  # type: ignore[assignment]
        # isend/irecv stay unwrapped: P2POp insists on the originals (the runtime batches every P2P op).
        for name in ("send", "recv"):
            setattr(dist, name, self._p2p(name, self._saved[name]))
        for name, (arg, group_arg) in COLLECTIVES.items():
            if name in self._saved:
                setattr(dist, name, self._collective(name, self._saved[name], arg, group_arg))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._saved.items():
            setattr(dist, name, fn)
        self._saved = {}

    def _original(self, fn: Callable) -> Callable:
        return getattr(fn, "__wrapped__", fn)

    def _group(self, group: Any) -> tuple[int, ...] | None:
        if group is None:
            return None
        ranks = self._groups.get(group)
        if ranks is None:
            ranks = self._groups[group] = (() if group is dist.group.WORLD
                                          else tuple(dist.get_process_group_ranks(group)))
        return ranks or None

    def _p2p_op(self, fn: Callable, tensor: torch.Tensor, peer: int, group: Any, tag: int) -> int:
        kind = "send" if self._original(fn) in (self._saved["isend"], self._saved["send"], dist.isend) else "recv"
        # While a ring template is recorded, ``key`` holds the tensor's id (rings.py reads its owner).
        return self.append(Op(kind, peer=peer, group=self._group(group), numel=tensor.numel(), dtype=_dtype(tensor),
                              tag=tag, key=None if self.sink is None else id(tensor)))

    def _batch(self, ops: list[dist.P2POp]) -> list[Any]:
        return [_Work(self, [self._p2p_op(op.op, op.tensor, op.peer, op.group, op.tag)]) for op in ops]

    def _p2p(self, name: str, fn: Callable) -> Callable:
        peer_arg = "dst" if name == "send" else "src"

        @functools.wraps(fn)
        def wrapper(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            bound = inspect.signature(fn).bind(tensor, *args, **kwargs).arguments
            ref = self._p2p_op(fn, tensor, bound.get(peer_arg, -1), bound.get("group"), bound.get("tag", 0))
            self.append(Op("wait", ref=ref))  # blocking: the wait is part of the call
            return None

        return wrapper

    def _collective(self, name: str, fn: Callable, arg: str | None, group_arg: str) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs).arguments
            tensor = bound.get(arg) if arg else None
            numel, dtype = (tensor.numel(), _dtype(tensor)) if isinstance(tensor, torch.Tensor) else (0, "")
            self.append(Op(name, group=self._group(bound.get(group_arg)), numel=numel, dtype=dtype))
            return _Work(self, []) if bound.get("async_op") else None

        return wrapper


class HostSyncs:
    """Counts device-to-host reads (``count``) and answers them with zeros (there is no value to read).

    While installed (``with counter:``) the reading methods of ``torch.Tensor`` are replaced, not
    wrapped in a ``TorchFunctionMode``: a mode would add a Python call to every torch op of the
    step (millions at 1,024 ranks) to catch six methods.
    """

    READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu")

    def __init__(self) -> None:
        self.count = 0
        self.by_kind: dict[str, int] = {}
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> "HostSyncs":
        for name in (*self.READS, "pin_memory"):
            self._saved[name] = torch.Tensor.__dict__.get(name, _INHERITED)
            original = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._reader(name, original) if name != "pin_memory" else _identity)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._saved.items():
            if fn is _INHERITED:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, fn)
        self._saved = {}

    def _reader(self, kind: str, original: Callable) -> Callable:
        def read(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            if kind == "cpu":
                return original(t, *args, **kwargs)
            zero: Any = False if t.dtype == torch.bool else (0 if not t.dtype.is_floating_point else 0.0)
            if kind == "tolist":
                return _zeros(list(t.shape), zero)
            if kind == "__bool__":
                return False
            return float(zero) if kind == "__float__" else int(zero) if kind == "__int__" else zero

        return read


_INHERITED = object()
"""Marks a method ``torch.Tensor`` inherits (from ``TensorBase``): restored by deleting the patch."""


def _identity(t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return t  # pin_memory: no accelerator here, and a meta tensor has nothing to pin


def _zeros(shape: list[int], zero: Any) -> Any:
    if not shape:
        return zero
    return [_zeros(shape[1:], zero) for _ in range(shape[0])]
