"""Point-to-point transfers around one ring, on the default process group, with a deadline.

Peers are addressed by their *global* rank (from the plan's ring member list); there is no process
group per ring and no barrier. Rings are dynamic (a new set every step), and creating groups per
step would itself be a collective over all ranks.

Usage per ring step: ``send_recv`` (queue) one or more buffers, ``commit`` (post them all in one
``batch_isend_irecv``), compute, then ``wait``. Posting before computing overlaps the transfer
with the block's attention.

Timeout: ``wait`` calls ``Work.wait(timeout=...)`` with the time left until one deadline for the
whole batch. On gloo that blocks the host and raises on expiry; on NCCL, a ``wait`` *with* a timeout
also blocks the host until completion (PyTorch's documented behaviour), so the deadline costs a
host sync per ring step there. ``timeout_s=None`` uses a plain ``wait()`` instead (stream-ordered on
NCCL, no host sync) and leaves hangs to the process group's own watchdog.
"""

from __future__ import annotations

import datetime
import time

import torch
import torch.distributed as dist

from hdp.runtime.parallel.peers import PeerError, peer_cause


LATE_SLACK_S = 0.05
"""A wait that fails this close to its deadline timed out (backends round timeouts to milliseconds)."""


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
        self, ring_id: int, mb_index: int, prev_rank: int, next_rank: int, timeout_s: float | None = 60.0
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
        self.ring_id = ring_id
        self.mb_index = mb_index
        self.prev_rank = prev_rank
        self.next_rank = next_rank
        self.timeout_s = timeout_s
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
        """Queue sending ``to_send`` to global rank ``dst`` and receiving into ``recv`` from ``src``.

        The general form of ``send_recv`` for rings whose blocks do not all travel to ``next_rank``
        (two-level: inner and outer neighbours; bidirectional: both directions). Same rules.
        """
        if self._works is not None:
            raise RingCommError(f"ring {self.ring_id}: send_recv after commit and before wait")
        if not recv.is_contiguous():
            raise ValueError("the receive buffer must be contiguous")
        to_send = to_send.contiguous()
        self._buffers += [to_send, recv]
        if to_send.numel() > 0:
            self._queued.append(dist.P2POp(dist.isend, to_send, dst, tag=tag))
            self._peers.append(("send to", dst))
        if recv.numel() > 0:
            self._queued.append(dist.P2POp(dist.irecv, recv, src, tag=tag))
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
        """Block until every committed op completes; raise ``RingTimeoutError`` past the deadline."""
        if self._works is None:
            raise RingCommError(f"ring {self.ring_id}: wait without commit")
        works, self._works = self._works, None
        buffers, self._buffers = self._buffers, []
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
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
        del buffers  # completed: the backend no longer touches them
