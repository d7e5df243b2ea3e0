"""A plan under construction, and its conversion into the frozen ``Plan``.

Planners decide which sequences (whole, or as ring members) go into which micro-batch of which rank;
the draft turns those decisions into segments, numbers nothing itself (ring ids are the planner's),
and asks the cost model for the predicted step time and its lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hdp.plan.cost import CostModel
from hdp.plan.replay import replay
from hdp.plan.sharding import num_offload_layers
from hdp.plan.zigzag import member_segments
from hdp.plan.types import MicroBatch, Plan, RankPlan, Ring, Segment, Sequence
from hdp.plan.work import bound_from_items


@dataclass(slots=True)
class DraftMicroBatch:
    whole: list[int] = field(default_factory=list)
    """Sequences held whole."""
    rings: list[int] = field(default_factory=list)
    """Rings (ids) this rank is a member of in this micro-batch."""
    offload_ratio: float = 0.0
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

    def seq_micro_batch(self, seqs: list[int], offload_ratio: float = 0.0, token_limit: int = 0) -> DraftMicroBatch:
        return DraftMicroBatch(whole=list(seqs), offload_ratio=offload_ratio, token_limit=token_limit or self.capacity)

    def ring_micro_batch(self, rings: list[int], offload_ratio: float = 0.0, token_limit: int = 0) -> DraftMicroBatch:
        return DraftMicroBatch(rings=list(rings), offload_ratio=offload_ratio, token_limit=token_limit or self.capacity)

    def finish(self, strategy: str, cost: CostModel, stages: int = 1, extra: dict | None = None) -> Plan:
        rings = tuple(Ring(i, s, tuple(m)) for i, (s, m) in enumerate(zip(self.ring_seq, self.ring_ranks)))
        position = [{r: i for i, r in enumerate(m)} for m in self.ring_ranks]
        rank_plans = []
        for rank, mbs in enumerate(self.ranks):
            out = []
            for mb in mbs:
                segs: list[Segment] = []
                for g in mb.rings:
                    seq = self.ring_seq[g]
                    segs.extend(member_segments(seq, self.lengths[seq], len(self.ring_ranks[g]), position[g][rank]))
                segs.extend(Segment(s, 0, self.lengths[s]) for s in mb.whole)
                out.append(MicroBatch(tuple(segs), tuple(mb.rings), mb.offload_ratio, mb.token_limit or self.capacity,
                                      num_offload_layers(mb.offload_ratio, cost.layers)))
            rank_plans.append(RankPlan(rank, tuple(out)))
        plan = Plan(
            strategy=strategy,
            num_ranks=self.num_ranks,
            capacity_tokens=self.capacity,
            sequences=tuple(Sequence(i, n) for i, n in enumerate(self.lengths)),
            rings=rings,
            ranks=tuple(rank_plans),
            pipeline_stages=stages,
            extra=dict(extra or {}),
        )
        predicted, bound = estimate(plan, cost)
        return Plan(
            strategy=plan.strategy, num_ranks=plan.num_ranks, capacity_tokens=plan.capacity_tokens,
            sequences=plan.sequences, rings=plan.rings, ranks=plan.ranks, pipeline_stages=stages,
            predicted_step_time_s=predicted, lower_bound_s=bound, extra=plan.extra,
        )


def micro_batch_time(plan: Plan, mb: MicroBatch, cost: CostModel) -> float:
    """Cost-model time of one micro-batch on one rank (all layers it holds, fwd+bwd)."""
    ring_seqs = {plan.rings[g].seq: plan.rings[g].size for g in mb.rings}
    t = cost.micro_batch_overhead(max(ring_seqs.values(), default=1))
    for seq, k in ring_seqs.items():
        t += cost.seq_time(plan.sequences[seq].length, k)
    for s in mb.segments:
        if s.seq not in ring_seqs:
            t += cost.seq_time(s.num_tokens)
    return t


def _cached_time(plan: Plan, mb: MicroBatch, cost: CostModel, cache: dict[tuple, float]) -> float:
    """micro_batch_time, computed once for all members of a ring micro-batch (it depends only on
    the rings and the whole sequences: a static CP group has thousands of identical members)."""
    if not mb.rings:
        return micro_batch_time(plan, mb, cost)
    ring_seqs = {plan.rings[g].seq for g in mb.rings}
    key = (mb.rings, tuple(s.seq for s in mb.segments if s.seq not in ring_seqs))
    t = cache.get(key)
    if t is None:
        t = cache[key] = micro_batch_time(plan, mb, cost)
    return t


def estimate(plan: Plan, cost: CostModel) -> tuple[float, float]:
    """(predicted step time, lower bound) under the cost model.

    The cost model holds the layers of one pipeline stage, so a micro-batch's time t is its time
    on every stage; a 1F1B pipeline of P stages adds a bubble of (P-1) times its largest t.
    """
    p = plan.pipeline_stages
    cache: dict[tuple, float] = {}
    times = [[_cached_time(plan, mb, cost, cache) for mb in rp.micro_batches] for rp in plan.ranks]
    rep = replay(plan, times)
    bubble = [(p - 1) * max(t, default=0.0) for t in times]
    predicted = max((f + b for f, b in zip(rep.finish, bubble)), default=0.0)
    return predicted, time_bound([s.length for s in plan.sequences], plan.num_ranks, plan.capacity_tokens, cost)


def time_bound(lengths: list[int], num_ranks: int, capacity: int, cost: CostModel) -> float:
    """PLAN_FORMAT's plan-independent bound in cost-model seconds: every sequence on its fewest
    ranks without offloading, ceil(L / C), compute only."""
    items = []
    for n in lengths:
        k = -(-n // capacity)
        items.append((cost.seq_time(n, k), k))
    return bound_from_items(items, num_ranks)
