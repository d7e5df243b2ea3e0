"""A plan under construction, and its conversion into the frozen ``Plan``.

Planners decide which sequences (whole, or as ring members) go into which micro-batch of which rank;
the draft turns those decisions into segments, numbers nothing itself (ring ids are the planner's).
``Draft.estimate`` times it before any segment exists, with the same arithmetic as
``hdp.plan.estimate.estimate`` on the finished plan (the same floats: tests/plan/test_speed.py), so
a planner that compares candidates builds only the plan it keeps.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from dataclasses import dataclass, field

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.estimate import time_bound
from hdp.plan.replay import replay_rings
from hdp.plan.schedule.sharding import offload_ratio_of
from hdp.plan.cost.topology import Topology, ring_algo_for
from hdp.plan.types import MicroBatch, Plan, RankPlan, Ring, Segment, Sequence
from hdp.plan.zigzag import ring_pieces


@dataclass(slots=True)
class DraftMicroBatch:
    whole: list[int] = field(default_factory=list)
    """Sequences held whole."""
    rings: list[int] = field(default_factory=list)
    """Rings (ids) this rank is a member of in this micro-batch."""
    offload_layers: int = 0
    """Layers whose activations go to the host (the plan's ``offload_ratio`` is derived from it)."""
    token_limit: int = 0


@dataclass(slots=True)
class Draft:
    lengths: list[int]
    num_ranks: int
    capacity: int
    ring_seq: list[int] = field(default_factory=list)
    ring_ranks: list[list[int]] = field(default_factory=list)
    ranks: list[list[DraftMicroBatch]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ranks:
            self.ranks = [[] for _ in range(self.num_ranks)]

    def new_ring(self, seq: int, members: list[int]) -> int:
        self.ring_seq.append(seq)
        self.ring_ranks.append(list(members))
        return len(self.ring_seq) - 1

    def seq_micro_batch(self, seqs: list[int], offload_layers: int = 0, token_limit: int = 0) -> DraftMicroBatch:
        return DraftMicroBatch(whole=list(seqs), offload_layers=offload_layers, token_limit=token_limit or self.capacity)

    def ring_micro_batch(self, rings: list[int], offload_layers: int = 0, token_limit: int = 0) -> DraftMicroBatch:
        return DraftMicroBatch(rings=list(rings), offload_layers=offload_layers, token_limit=token_limit or self.capacity)

    def ring_algos(self, topology: Topology | None) -> list[str]:
        """The algorithm each ring runs: the one asked for where it applies, else flat (once per
        member set: a static mesh's rings of one CP group all have the same)."""
        if topology is None:
            return ["flat"] * len(self.ring_ranks)
        memo: dict[tuple[int, ...], str] = {}
        out = []
        for m in self.ring_ranks:
            key = tuple(m)
            algo = memo.get(key)
            if algo is None:
                algo = memo[key] = ring_algo_for(m, topology)
            out.append(algo)
        return out

    def estimate(self, cost: CostModel, stages: int = 1, topology: Topology | None = None) -> tuple[float, float]:
        """(predicted step time, lower bound) of the finished plan (``hdp.plan.estimate.estimate``)."""
        lengths, sizes = self.lengths, [len(m) for m in self.ring_ranks]
        exposure = _exposures(self, cost, topology) if topology is not None else None
        cache: dict[tuple, float] = {}
        ring_t = [cost.seq_time(lengths[q], k) for q, k in zip(self.ring_seq, sizes)]
        whole_t = list(map(cost.seq_time, lengths))
        alone = cost.micro_batch_overhead(1)
        times = []
        for mbs in self.ranks:
            ts = []
            for mb in mbs:
                # micro_batch_time: overhead, rings in order, then whole sequences in order
                if not mb.rings:
                    t = alone
                    for q in mb.whole:
                        t += whole_t[q]
                    ts.append(t)
                    continue
                key = (tuple(mb.rings), tuple(mb.whole))
                t = cache.get(key)
                if t is None:
                    t = cost.micro_batch_overhead(max(sizes[g] for g in mb.rings))
                    for g in mb.rings:
                        t += ring_t[g]
                    for q in mb.whole:
                        t += whole_t[q]
                    if exposure is not None:
                        t = t + sum(exposure[g] for g in mb.rings)
                    cache[key] = t
                ts.append(t)
            times.append(ts)
        rep = replay_rings([[mb.rings for mb in mbs] for mbs in self.ranks], self.ring_ranks, times)
        bubble = [(stages - 1) * max(t, default=0.0) for t in times]
        predicted = max((f + b for f, b in zip(rep.finish, bubble)), default=0.0)
        return predicted, time_bound(lengths, self.num_ranks, self.capacity, cost, stages)

    def finish(self, strategy: str, cost: CostModel, stages: int = 1, extra: dict | None = None,
               topology: Topology | None = None, timed: tuple[float, float] | None = None) -> Plan:
        """The frozen plan; with a ``topology`` every ring records the algorithm it runs (the one
        asked for where it applies, else flat) and the plan its ``gpus_per_node``. ``timed``: this
        draft's ``estimate``, when the planner has it already."""
        rings = tuple(Ring(i, s, tuple(m), algo)
                      for i, (s, m, algo) in enumerate(zip(self.ring_seq, self.ring_ranks, self.ring_algos(topology))))
        by_members: dict[tuple[int, ...], dict[int, int]] = {}
        position = []  # each ring's member -> zig-zag position, one dict per member set
        for m in self.ring_ranks:
            key = tuple(m)
            pos = by_members.get(key)
            if pos is None:
                pos = by_members[key] = {r: i for i, r in enumerate(m)}
            position.append(pos)
        pieces = [ring_pieces(s, self.lengths[s], len(m)) for s, m in zip(self.ring_seq, self.ring_ranks)]
        dense = [self.lengths[s] >= 2 * len(m) for s, m in zip(self.ring_seq, self.ring_ranks)]  # no empty piece
        shared: dict[tuple[int, ...], dict[int, tuple[Segment, ...]] | None] = {}
        rank_plans = []
        for rank, mbs in enumerate(self.ranks):
            out = []
            for mb in mbs:
                segs: list[Segment] | tuple[Segment, ...]
                if len(mb.rings) > 1:
                    key = tuple(mb.rings)
                    if key not in shared:
                        shared[key] = _columns(key, position, pieces, dense)
                    cols = shared[key]
                if len(mb.rings) > 1 and cols is not None:
                    segs = cols[rank]
                    if mb.whole:
                        segs = segs + tuple(Segment(s, 0, self.lengths[s]) for s in mb.whole)
                else:
                    segs = []
                    for g in mb.rings:
                        i = position[g][rank]
                        if (front := pieces[g][0][i]) is not None:
                            segs.append(front)
                        if (back := pieces[g][1][i]) is not None:
                            segs.append(back)
                    segs.extend(Segment(s, 0, self.lengths[s]) for s in mb.whole)
                out.append(MicroBatch(tuple(segs), tuple(mb.rings), offload_ratio_of(mb.offload_layers, cost.layers),
                                      mb.token_limit or self.capacity, mb.offload_layers))
            rank_plans.append(RankPlan(rank, tuple(out)))
        plan = Plan(
            strategy=strategy,
            num_ranks=self.num_ranks,
            capacity_tokens=self.capacity,
            sequences=tuple(Sequence(i, n) for i, n in enumerate(self.lengths)),
            rings=rings,
            ranks=tuple(rank_plans),
            pipeline_stages=stages,
            gpus_per_node=topology.ranks_per_node if topology else 0,
            extra=dict(extra or {}),
        )
        predicted, bound = timed or self.estimate(cost, stages, topology)
        return dataclasses.replace(plan, predicted_step_time_s=predicted, lower_bound_s=bound)


def _columns(rings: tuple[int, ...], position: list[dict[int, int]], pieces: list[tuple[list, list]],
             dense: list[bool]) -> dict[int, tuple[Segment, ...]] | None:
    """Every member's segments of a micro-batch of several rings over the same members (a static
    mesh's micro-batch: hundreds of rings on a CP group), ring by ring, built at once per member
    set instead of once per rank; None when the rings' members differ."""
    pos = position[rings[0]]
    if any(position[g] is not pos for g in rings):
        return None
    # position i -> the i-th member's front and back piece of each ring, ring by ring
    columns = zip(*(side for g in rings for side in pieces[g]))
    if not all(dense[g] for g in rings):  # drop the pieces with no tokens
        columns = map(tuple, map(partial(filter, None), columns))
    return dict(zip(pos, columns))


def _exposures(draft: Draft, cost: CostModel, topology: Topology) -> list[float]:
    """Each ring member's exposed transfers (``hdp.plan.estimate._with_ring_transfers``)."""
    from hdp.plan.cost.ringcomm import links_of, member_exposure_s
    from hdp.plan.cost.topology import ring_shape

    links = links_of(topology)
    shapes: dict[tuple[int, ...], tuple[int, int]] = {}
    out = []
    for seq, members, algo in zip(draft.ring_seq, draft.ring_ranks, draft.ring_algos(topology)):
        key = tuple(members)
        shape = shapes.get(key)
        if shape is None:
            shape = shapes[key] = ring_shape(members, topology.ranks_per_node)
        out.append(member_exposure_s(cost, draft.lengths[seq], len(members), algo, *shape, links))
    return out
