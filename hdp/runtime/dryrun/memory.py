"""The worst rank's peak memory as torch's own tracker measures it, beside the planner's formula.

``torch.distributed._tools.mem_tracker.MemTracker`` is a ``TorchDispatchMode`` that follows every
tensor storage created while it is installed (and those registered with ``track_external``) and
keeps the peak of their sum. It reads sizes only, so it runs on ``meta`` tensors as under
``FakeTensorMode``, at the meta speed (the dry run's tensors are meta already). It costs one more
step of one rank with the *full* model (every layer's projections, MLP, ring blocks and local
attention, not the skeleton), which is why only the worst rank is measured, and only on request
(``--dry-run-measure-memory``).

What it sees and the formula does not, and the reverse (docs/dry-run.md, "tracked peak"):
autograd's temporaries at the moment of the peak, the [T, V] logits and the loss's float32 copy,
which the formula leaves to its activation constant; offloaded layers are not offloaded here.
``ShardedAdamW`` is not a ``torch.optim.Optimizer``, so its flat buffers (parameters, gradients,
master weights, moments) are registered as tensors: they count under "Other"/"Optstate" alike.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch
from torch.distributed._tools.mem_tracker import MemTracker

from hdp.plan.types import Plan
from hdp.runtime.config import TrainConfig
from hdp.runtime.dryrun.drive import record_step


class _StepTracker(MemTracker):
    """``MemTracker`` over one step of several micro-batches: each calls the model once more.

    MemTracker takes a second forward of the root module for a second iteration and refuses it;
    here it is the next micro-batch of the same step, so the root's per-module statistics (not the
    peak, which is all this reads) start again. Parameter hooks are not installed twice (MemTracker
    checks).
    """

    def __init__(self, root: torch.nn.Module) -> None:
        super().__init__()
        self._root = root

    def _pre_fw_hook(self, module: torch.nn.Module, inputs: Any) -> None:
        if module is self._root and module in self.memory_tracking and not self._mod_tracker.is_bw:
            del self.memory_tracking[module]
        super()._pre_fw_hook(module, inputs)


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors an optimizer holds (attributes, lists, tuples and dicts of them, one level down)."""
    out: list[torch.Tensor] = []
    for value in vars(obj).values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        out += [t for t in items if isinstance(t, torch.Tensor)]
    return out


def tracked_peak(config: TrainConfig, plan: Plan, batch: Any, world_size: int, rank: int) -> dict[str, int]:
    """``rank``'s step with the full model under ``MemTracker``: peak bytes in total and by category."""
    trackers: list[MemTracker] = []

    @contextlib.contextmanager
    def tracked(model: torch.nn.Module, optimizer: Any) -> Iterator[None]:
        tracker = _StepTracker(model)
        tracker.track_external(model, *_tensors(optimizer))
        trackers.append(tracker)
        with tracker:
            yield

    with warnings.catch_warnings():  # MemTracker warns of each None it is handed (absent gradients)
        warnings.simplefilter("ignore", UserWarning)
        record_step(config, plan, batch, world_size, full=True, templated=False, ranks=[rank], around=tracked)
    peak = trackers[0].get_tracker_snapshot("peak")
    snap = next(iter(peak.values()), {})
    return {getattr(k, "value", str(k)): int(v) for k, v in snap.items()}
