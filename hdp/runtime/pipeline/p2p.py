"""Activation and gradient transfers between one pipeline's neighbouring stages.

Every size is known from the plan (a micro-batch's token count x hidden size), so receive buffers
are allocated exactly and there is no shape handshake. Transfers are point-to-point in the run's
world group between the global ranks of ``Mesh.pipeline(h, t)``, posted with ``batch_isend_irecv``
through ``RingComm`` (its deadline and named errors, its stream-ordered wait on NCCL).

After each event a stage posts its output's send *together with* the next event's receive in one
batch: in steady 1F1B, stage s sends F(i)'s activation up while stage s + 1 sends B(j)'s gradient
down, and NCCL runs a send only with its peer's receive, so the two must be in one group on both
sides (Megatron's send_forward_recv_backward). Where waits block the host (gloo), only receives are
waited before computing; sends are waited at the end of the step (``close``), so no stage ever
blocks on a peer that is still behind it (docs/pipeline.md).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from hdp.runtime.attention.ring.comm import RingComm, stream_ordered

ACTIVATION, GRADIENT = 21, 22
"""Tags of the two streams (gloo matches by tag and order), apart from the rings' (11-16) and the router's."""


class StageLink:
    """This stage's transfers to and from its pipeline neighbours (peers named by stage)."""

    def __init__(self, pipeline: list[int], stage: int, hdp_rank: int, timeout_s: float | None,
                 group: dist.ProcessGroup | None = None) -> None:
        self.pipeline, self.stage, self.timeout_s, self.group = pipeline, stage, timeout_s, group
        self.name = f"of pipeline {hdp_rank} (stage {stage})"  # read by RingComm's messages as "ring ..."
        self.ordered = dist.is_initialized() and stream_ordered(group)
        self._sends: list[RingComm] = []
        self._recv: RingComm | None = None
        self.wait_s = 0.0
        """Host seconds spent waiting for receives this step (the stage's idle time on gloo)."""

    def _comm(self, mb_index: int) -> RingComm:
        return RingComm(self.name, mb_index, self.stage - 1, self.stage + 1, self.timeout_s,  # type: ignore[arg-type]
                        self.group, to_global=lambda s: self.pipeline[s])

    def post(self, mb_index: int, send: tuple[torch.Tensor, int, int] | None,
             recv: tuple[torch.Tensor, int, int] | None) -> None:
        """Queue and post ``send`` = (tensor, peer stage, tag) and ``recv`` = (buffer, peer stage, tag), either may be None."""
        none = torch.empty(0)
        if self.ordered:  # one group: the simultaneous pair (module docstring)
            comm = self._comm(mb_index)
            if send is not None:
                comm.exchange(send[0], send[1], none, send[1], send[2])
            if recv is not None:
                comm.exchange(none, recv[1], recv[0], recv[1], recv[2])
            comm.commit()
            self._recv = comm
            return
        if send is not None:
            comm = self._comm(mb_index)
            comm.exchange(send[0], send[1], none, send[1], send[2])
            comm.commit()
            self._sends.append(comm)
        if recv is not None:
            comm = self._comm(mb_index)
            comm.exchange(none, recv[1], recv[0], recv[1], recv[2])
            comm.commit()
            self._recv = comm

    def wait_recv(self) -> None:
        """Wait for the last posted receive (stream-ordered on NCCL: its batch's send too)."""
        if self._recv is None:
            return
        start = time.perf_counter()
        comm, self._recv = self._recv, None
        comm.wait()
        self.wait_s += time.perf_counter() - start

    def close(self) -> None:
        """Wait for every send of the step (their buffers stay alive until then)."""
        self.wait_recv()
        sends, self._sends = self._sends, []
        for comm in sends:
            comm.wait()
