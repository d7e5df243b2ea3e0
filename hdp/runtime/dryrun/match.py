"""Replay every rank's recorded ops together under NCCL's rules: matched, ordered, and complete.

* P2P: FIFO per (sender, receiver, group): the i-th send from a to b on a group meets b's i-th
  receive from a on it (NCCL ignores tags), with the same number of elements and dtype; a tag
  that differs means the data would land in another stream's buffer, so it is an error too.
* Collectives: every member of the group calls its c-th collective on the group with the same
  name, size and dtype; it completes when all members have reached it.
* Ring phases (``rings``: a templated ring call) complete when all the ring's members reach them,
  which is exactly when the real ring protocol can complete (a member cannot finish a ring step
  before every member has started it); the protocol inside is checked once per ring shape, op by op.
* Progress: ranks are cooperative sequences; any rank whose next op can complete advances (posts
  never block, a wait blocks until its op is matched, a collective until all members arrive). If
  ranks remain unfinished when none can advance, that is a deadlock, named rank by rank.

Pure Python (no torch): it reads ``record.Op`` lists only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from hdp.runtime.dryrun.record import P2P_KINDS, Op

MAX_ERRORS = 20


@dataclass
class Match:
    matched: bool
    errors: list[str] = field(default_factory=list)


def _group_name(group: tuple[int, ...] | None) -> str:
    if group is None:
        return "the world group"
    shown = ", ".join(map(str, group[:8])) + (", ..." if len(group) > 8 else "")
    return f"group [{shown}]"


def _at(rank: int, index: int, op: Op) -> str:
    where = f" in {op.where}" if op.where else ""
    return f"rank {rank} op #{index}{where}: {op.describe()}"


def match(ops: Sequence[Sequence[Op]], world_size: int, label: str = "") -> Match:
    """Check and replay ``ops[r]`` for every rank r; errors name (rank, op, peer)."""
    errors: list[str] = []
    prefix = f"{label}: " if label else ""

    def error(text: str) -> None:
        if len(errors) < MAX_ERRORS:
            errors.append(prefix + text)

    n = len(ops)
    pc = [0] * n
    done: list[set[int]] = [set() for _ in range(n)]
    waiting: dict[int, int] = {}  # rank -> op index it waits for
    sends: dict[tuple[int, int, Any], deque[tuple[int, int]]] = {}
    recvs: dict[tuple[int, int, Any], deque[tuple[int, int]]] = {}
    counters: dict[tuple[int, Any], int] = {}  # (rank, group) -> collectives issued
    arrivals: dict[tuple[Any, int], list[tuple[int, int]]] = {}  # (group, c) -> (rank, op index)
    complete: set[tuple[Any, int]] = set()
    joined: dict[int, tuple[Any, int]] = {}  # rank -> the collective instance it is in
    ready = deque(range(n))

    def finish(rank: int, index: int) -> None:
        done[rank].add(index)
        if waiting.get(rank) == index:
            del waiting[rank]
            ready.append(rank)

    def post(rank: int, index: int, op: Op) -> None:
        if not 0 <= op.peer < world_size or op.peer == rank:
            error(f"{_at(rank, index, op)}: peer {op.peer} is not another rank of the {world_size}")
            finish(rank, index)
            return
        if op.group is not None and (rank not in op.group or op.peer not in op.group):
            error(f"{_at(rank, index, op)}: rank {rank} or its peer is not in {_group_name(op.group)}")
        src, dst = (rank, op.peer) if op.kind == "send" else (op.peer, rank)
        key = (src, dst, op.group)
        mine, theirs = (sends, recvs) if op.kind == "send" else (recvs, sends)
        queue = theirs.get(key)
        if queue:
            other_rank, other_index = queue.popleft()
            other = ops[other_rank][other_index]
            s, r = (op, other) if op.kind == "send" else (other, op)
            if (s.numel, s.dtype) != (r.numel, r.dtype) or s.tag != r.tag:
                what = "sizes differ" if (s.numel, s.dtype) != (r.numel, r.dtype) else (
                    "tags differ (NCCL ignores tags: the data would land in another stream's buffer)")
                si, ri = (index, other_index) if op.kind == "send" else (other_index, index)
                error(f"{_at(src, si, s)} meets {_at(dst, ri, r)}: {what}")
            finish(rank, index)
            finish(other_rank, other_index)
        else:
            mine.setdefault(key, deque()).append((rank, index))

    def arrive(rank: int, index: int, op: Op) -> bool:
        """Join the collective/phase at ``index``; True once it has completed."""
        group = op.group
        if rank in joined:
            return joined[rank] in complete
        members = range(world_size) if group is None else group
        if group is not None and rank not in group:
            error(f"{_at(rank, index, op)}: rank {rank} is not in {_group_name(group)}")
            return True
        c = counters.get((rank, group), 0)
        counters[(rank, group)] = c + 1
        inst = (group, c)
        joined[rank] = inst
        here = arrivals.setdefault(inst, [])
        if here:
            first_rank, first_index = here[0]
            first = ops[first_rank][first_index]
            if _signature(first) != _signature(op):
                error(f"{_at(rank, index, op)} meets {_at(first_rank, first_index, first)} as collective #{c} "
                      f"of {_group_name(group)}: they differ")
        here.append((rank, index))
        if len(here) == len(members):
            complete.add(inst)
            for member, _ in here:
                if member != rank:
                    ready.append(member)
            return True
        return False

    while ready:
        rank = ready.popleft()
        seq = ops[rank]
        while pc[rank] < len(seq):
            i = pc[rank]
            op = seq[i]
            if op.kind in P2P_KINDS:
                post(rank, i, op)
            elif op.kind == "wait":
                if op.ref not in done[rank]:
                    waiting[rank] = op.ref
                    break
            else:
                if not arrive(rank, i, op):
                    break
                joined.pop(rank, None)
            pc[rank] += 1

    stalled = [r for r in range(n) if pc[r] < len(ops[r])]
    for r in stalled[:MAX_ERRORS]:
        op = ops[r][pc[r]]
        if op.kind == "wait":
            target = ops[r][op.ref]
            error(f"deadlock: {_at(r, op.ref, target)} never completes (rank {target.peer} never posts its side)")
        else:
            inst = joined.get(r)
            here = {m for m, _ in arrivals.get(inst, [])} if inst else set()
            members = range(world_size) if op.group is None else op.group
            missing = [m for m in members if m not in here]
            shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
            error(f"deadlock: {_at(r, pc[r], op)} waits for ranks [{shown}], which never reach it")
    if not stalled:
        for table, side in ((sends, "send"), (recvs, "receive")):
            for (src, dst, _), queue in table.items():
                for rank, index in list(queue)[:3]:
                    error(f"{_at(rank, index, ops[rank][index])}: no matching {'receive' if side == 'send' else 'send'} "
                          f"on rank {dst if side == 'send' else src}")
    return Match(not errors, errors)


def _signature(op: Op) -> tuple:
    if op.kind == "phase":
        shape, _, direction, tokens = op.key
        return ("phase", shape, direction, tokens)
    return (op.kind, op.numel, op.dtype)
