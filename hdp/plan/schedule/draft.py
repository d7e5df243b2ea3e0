"""A plan under construction, and its conversion into the frozen ``Plan``.

Planners decide which sequences (whole, or as ring members) go into which micro-batch of which rank;
the draft turns those decisions into segments, numbers nothing itself (ring ids are the planner's),
and asks ``estimate.py`` for the predicted step time and its lower bound.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.estimate import estimate
from hdp.plan.schedule.sharding import offload_ratio_of
from hdp.plan.cost.topology import Topology, ring_algo_for
from hdp.plan.types import MicroBatch, Plan, RankPlan, Ring, Segment, Sequence
from hdp.plan.zigzag import ring_segments


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

    def finish(self, strategy: str, cost: CostModel, stages: int = 1, extra: dict | None = None,
               topology: Topology | None = None) -> Plan:
        """The frozen plan; with a ``topology`` every ring records the algorithm it runs (the one
        asked for where it applies, else flat) and the plan its ``gpus_per_node``."""
        rings = tuple(Ring(i, s, tuple(m), ring_algo_for(m, topology) if topology else "flat")
                      for i, (s, m) in enumerate(zip(self.ring_seq, self.ring_ranks)))
        position = [{r: i for i, r in enumerate(m)} for m in self.ring_ranks]
        pieces = [ring_segments(s, self.lengths[s], len(m)) for s, m in zip(self.ring_seq, self.ring_ranks)]
        rank_plans = []
        for rank, mbs in enumerate(self.ranks):
            out = []
            for mb in mbs:
                segs: list[Segment] = []
                for g in mb.rings:
                    segs.extend(pieces[g][position[g][rank]])
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
        predicted, bound = estimate(plan, cost, topology)
        return dataclasses.replace(plan, predicted_step_time_s=predicted, lower_bound_s=bound)
