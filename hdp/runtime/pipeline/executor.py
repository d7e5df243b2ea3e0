"""One step's forwards and backwards on one pipeline stage, in the 1F1B order of ``schedule``.

Every stage of a pipeline builds the same micro-batch inputs (the HDP rank's, ``train.inputs``) and
so knows every activation's size [T, h]; stage 0 reads the tokens, the last stage the labels. A
forward receives the previous stage's activation into an exact buffer (a leaf that requires grad),
runs the stage's layers and sends its output on; the last stage computes the loss share (the
caller's ``loss_fn``, with the global denominator). A backward receives the output's gradient,
runs autograd through the stage (gradients accumulate in the optimizer's flat buffer as in plain
HDP) and sends the input's gradient back. Ring attention inside a layer meets the other pipelines'
same stage in the same slot (``schedule.slots``). With ``--tp`` every TP rank t of a stage runs the
same events and exchanges its own sequence shard [Tp/tp, h] (Tp = T padded to a multiple of tp) with
TP rank t of the neighbouring stages (``Mesh.pipeline(h, t)``); the TP collectives inside a layer
stay within the stage's TP group.

Exactness: the stages compute exactly the whole model's layers on the same values; the only change
is where the boundary activation's gradient is summed, so one process and P stages agree to rounding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from hdp.runtime.model.tensor_parallel import padded_rows
from hdp.runtime.parallel.mesh import Coord, Mesh
from hdp.runtime.pipeline.p2p import ACTIVATION, GRADIENT, StageLink
from hdp.runtime.pipeline.schedule import Event, slots, stage_order


@dataclass(frozen=True, slots=True)
class StageTimes:
    """Where this stage's step went: host seconds waiting for its neighbours vs computing."""

    wait_s: float
    compute_s: float

    @property
    def bubble(self) -> float:
        total = self.wait_s + self.compute_s
        return self.wait_s / total if total > 0 else 0.0


def plan_slots(plan: Any) -> list[list[int]]:
    """Every HDP rank's micro-batch slots (``schedule.slots`` of the plan's rings)."""
    return slots([[mb.rings for mb in rp.micro_batches] for rp in plan.ranks])


def run_stage(model: nn.Module, plan: Any, inputs: Sequence[Any], mesh: Mesh, coord: Coord,
              loss_fn: Callable[[Any], torch.Tensor], *, timeout_s: float | None,
              group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, StageTimes]:
    """This stage's share of HDP rank ``coord.hdp``'s micro-batches ``inputs`` (plan order); returns
    (loss share, 0 except on the last stage; times). ``loss_fn(mb)`` is the last stage's loss of one
    micro-batch whose ``tokens`` are the stage's input activation."""
    s, P = coord.stage, mesh.pp
    last = s == P - 1
    first_param = next(model.parameters())
    dtype, device, hidden = first_param.dtype, first_param.device, model.cfg.hidden_size
    tp = getattr(model, "tp", None)  # --tp: each TP rank sends and receives its sequence shard
    order = stage_order(plan_slots(plan)[coord.hdp], s, P)
    link = StageLink(mesh.pipeline(coord.hdp, coord.tp), s, coord.hdp, timeout_s, group)
    loss_share = torch.zeros((), dtype=torch.float64, device=device)

    def receive(e: Event) -> tuple[torch.Tensor, int, int] | None:
        """The exact receive buffer ``e`` needs, from whom, on which stream (None: it needs none)."""
        rows = inputs[e.index].num_tokens
        if tp is not None:  # [Tp/tp, h]: T padded to a multiple of tp (model.tensor_parallel)
            rows = padded_rows(rows, tp.size) // tp.size
        if e.kind == "F" and s > 0:
            return torch.empty(rows, hidden, dtype=dtype, device=device), s - 1, ACTIVATION
        if e.kind == "B" and not last:
            return torch.empty(rows, hidden, dtype=dtype, device=device), s + 1, GRADIENT
        return None

    saved: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}  # index -> (stage input, output or loss)
    incoming = receive(order[0]) if order else None
    if incoming is not None:
        link.post(order[0].index, None, incoming)
    start = time.perf_counter()
    for k, e in enumerate(order):
        link.wait_recv()
        got = incoming[0] if incoming is not None else None
        mb = inputs[e.index]
        send = None
        if e.kind == "F":
            x_in = got.requires_grad_() if got is not None else None
            if last:
                out = loss_fn(replace(mb, tokens=x_in) if x_in is not None else mb)
                loss_share += out.detach()
            else:
                out = model(x_in if x_in is not None else mb.tokens, mb.positions, mb.attention)
                send = (out.detach(), s + 1, ACTIVATION)
            saved[e.index] = (x_in, out)
        else:
            x_in, out = saved.pop(e.index)
            out.backward() if last else out.backward(got)
            if x_in is not None:
                send = (x_in.grad, s - 1, GRADIENT)
        incoming = receive(order[k + 1]) if k + 1 < len(order) else None
        if send is not None or incoming is not None:
            link.post(order[k + 1].index if incoming is not None else e.index, send, incoming)
    link.close()
    total = time.perf_counter() - start
    return loss_share, StageTimes(link.wait_s, total - link.wait_s)
