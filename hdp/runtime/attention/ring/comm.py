"""Point-to-point transfers around one ring, with hdp's own deadline and named errors.

Peers are named by the plan's HDP rank (the ring's member list) and addressed by their *global* rank:
with ``--tp``/``--pp`` the process of this rank's (stage, TP index) coordinate
(``Groups.global_rank``), else the same number. There is no process
group per ring and no barrier. Rings are dynamic (a new set every step), and creating groups per
step would itself be a collective over all ranks. Each stream posts on one of the run's groups,
made once at start-up (``hdp.runtime.parallel.groups``): ``group=`` of every P2P op.

Usage per ring step: ``send_recv`` (queue) one or more buffers, ``commit`` (post them all in one
``batch_isend_irecv``), compute, then ``wait``. Posting before computing overlaps the transfer
with the block's attention.

Waiting (``wait``), chosen by ``stream_ordered(group)``:

* NCCL: a plain ``Work.wait()``, which makes the current stream wait and returns at once: no host
  sync per ring step (a ``wait(timeout=...)`` would block the host until the transfer completes).
  The deadline is watched off the training thread (``parallel.deadlines``): past it, that thread
  names the step, ring, micro-batch and peer and ends the process before NCCL's watchdog would.
* gloo: ``Work.wait(timeout=...)`` with the time left until one deadline for the whole batch,
  which blocks the host and raises ``RingTimeoutError`` on expiry, named the same way.

``timeout_s=None``: a plain ``wait()`` on every backend, no deadline of hdp's own.
"""

from __future__ import annotations

import datetime
import time
from typing import Callable

import torch
import torch.distributed as dist

from hdp.runtime.parallel import deadlines
from hdp.runtime.parallel.peers import PeerError, peer_cause


LATE_SLACK_S = 0.05
"""A wait that fails this close to its deadline timed out (backends round timeouts to milliseconds)."""


def stream_ordered(group: dist.ProcessGroup | None) -> bool:
    """True where ``Work.wait()`` orders the current stream instead of blocking the host (NCCL).

    A function of its own so that a test on gloo can take the NCCL branch.
    """
    return str(dist.get_backend(group)) == "nccl"


class RingCommError(PeerError):
    """A ring transfer failed; the message names the ring, the micro-batch and the peer."""


class RingTimeoutError(RingCommError):
    """A ring peer did not answer within the timeout (late, dead, or running another plan)."""


class RingComm:
    """Queue / commit / wait of batched P2P ops between this rank and its ring neighbours.

    Every member sends to ``next_rank`` and receives from ``prev_rank`` in the same order, so each
    send meets the matching receive; distinct ``tag``s keep K/V and dK/dV streams apart on backends
    that honour tags (gloo), and identical posting order keeps them apart on those that do not.
    """

    def __init__(
        self, ring_id: int, mb_index: int, prev_rank: int, next_rank: int, timeout_s: float | None = 60.0,
        group: dist.ProcessGroup | None = None, to_global: Callable[[int], int] | None = None,
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
        self.ring_id = ring_id
        self.mb_index = mb_index
        self.prev_rank = prev_rank
        self.next_rank = next_rank
        self.timeout_s = timeout_s
        self.group = group
        """The process group every op of this stream posts on (None: the default group)."""
        self.to_global = to_global if to_global is not None else (lambda r: r)
        """The plan's HDP rank -> the global rank of this coordinate's process (identity in plain HDP)."""
        self._queued: list[dist.P2POp] = []
        self._peers: list[tuple[str, int]] = []
        self._works: list[tuple[object, str, int]] | None = None
        self._buffers: list[torch.Tensor] = []  # kept alive until wait: the backend reads/writes them

    def send_recv(self, to_send: torch.Tensor, recv: torch.Tensor, tag: int = 0) -> torch.Tensor:
        """Queue sending ``to_send`` to the next member and receiving into ``recv`` from the previous.

        Sizes are known on both sides (from the plan), so an empty tensor is simply not sent and an
        empty receive is not posted: both ends skip the same op. ``recv`` must be contiguous and not
        touched until ``wait`` returns (the caller owns and may reuse it afterwards).
        """
        return self.exchange(to_send, self.next_rank, recv, self.prev_rank, tag)

    def exchange(self, to_send: torch.Tensor, dst: int, recv: torch.Tensor, src: int, tag: int = 0) -> torch.Tensor:
        """Queue sending ``to_send`` to HDP rank ``dst`` and receiving into ``recv`` from ``src`` (``to_global``).

        The general form of ``send_recv`` for rings whose blocks do not all travel to ``next_rank``
        (two-level: inner and outer neighbours; bidirectional: both directions). Same rules.
        """
        if self._works is not None:
            raise RingCommError(f"ring {self.ring_id}: send_recv after commit and before wait")
        if not recv.is_contiguous():
            raise ValueError("the receive buffer must be contiguous")
        to_send = to_send.contiguous()
        dst, src = self.to_global(dst), self.to_global(src)
        self._buffers += [to_send, recv]
        if to_send.numel() > 0:
            self._queued.append(dist.P2POp(dist.isend, to_send, dst, self.group, tag=tag))
            self._peers.append(("send to", dst))
        if recv.numel() > 0:
            self._queued.append(dist.P2POp(dist.irecv, recv, src, self.group, tag=tag))
            self._peers.append(("receive from", src))
        return recv

    def commit(self) -> None:
        """Post every queued op at once (nonblocking)."""
        if self._works is not None:
            raise RingCommError(f"ring {self.ring_id}: commit twice without wait")
        works = dist.batch_isend_irecv(self._queued) if self._queued else []
        if len(works) == len(self._peers):
            self._works = [(w, what, peer) for w, (what, peer) in zip(works, self._peers)]
        else:  # a backend that coalesces the batch into one work: name every peer of the batch
            peers = " / ".join(f"{what} rank {peer}" for what, peer in self._peers)
            self._works = [(w, peers, -1) for w in works]
        self._queued, self._peers = [], []

    def wait(self) -> None:
        """Wait for every committed op: stream-ordered on NCCL (deadline watched aside), else on the host."""
        if self._works is None:
            raise RingCommError(f"ring {self.ring_id}: wait without commit")
        works, self._works = self._works, None
        buffers, self._buffers = self._buffers, []
        if works and self.timeout_s is not None and stream_ordered(self.group):  # nothing posted: no group to ask
            # Before waiting: on a backend whose wait blocks after all (a test's gloo), the watcher still fires.
            deadlines.deadlines().watch([w for w, _, _ in works], self.timeout_s, self._late_line(works))
            self._wait_all(works, None)
        else:
            self._wait_all(works, None if self.timeout_s is None else time.monotonic() + self.timeout_s)
        del buffers  # completed (or, stream-ordered, kept alive by the backend's work): free to reuse

    def _late_line(self, works: list[tuple[object, str, int]]):
        """The one line the deadline watcher says for this batch (built only when it expires).

        ``where`` is read now: stream-ordered, the host runs on (into later layers, even the next step)
        while the transfer is still pending.
        """
        rank, where = dist.get_rank(), f"{deadlines.where}: " if deadlines.where else ""

        def line() -> str:
            ops = " / ".join(f"{what} rank {peer}" if peer >= 0 else what for _, what, peer in works)
            return (f"hdp train: error: rank {rank}: {where}ring {self.ring_id}, micro-batch {self.mb_index}: "
                    f"{ops} did not complete within {self.timeout_s:g} s (this rank {rank}); is that peer alive "
                    "and running the same plan?")
        return line

    def _wait_all(self, works: list[tuple[object, str, int]], deadline: float | None) -> None:
        for work, what, peer in works:
            try:
                if deadline is None:
                    work.wait()  # type: ignore[attr-defined]
                else:
                    left = max(deadline - time.monotonic(), 1e-3)
                    work.wait(timeout=datetime.timedelta(seconds=left))  # type: ignore[attr-defined]
            except RuntimeError as e:
                # By the clock, not the error text: the wait raised at (or just before) our deadline.
                late = deadline is not None and time.monotonic() >= deadline - LATE_SLACK_S
                kind = RingTimeoutError if late else RingCommError
                op = f"{what} rank {peer}" if peer >= 0 else what
                how = f"did not complete within {self.timeout_s:g} s" if late else f"failed: {peer_cause(e)}"
                raise kind(
                    f"ring {self.ring_id}, micro-batch {self.mb_index}: {op} {how}"
                    + f" (this rank {dist.get_rank()}); is that peer alive and running the same plan?"
                ) from e
