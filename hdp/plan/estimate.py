"""The planner's time estimate of a plan: per micro-batch compute, the replayed step, its bound.

One estimate serves the planner (``predicted_step_time_s``, ``lower_bound_s``, the offload cap) and
the simulator, which adds on top only what it models beyond compute (exposed ring and TP
communication, offload copies, pipeline bubbles, gradient sync).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.replay import replay
from hdp.plan.types import MicroBatch, Plan
from hdp.plan.work import bound_from_items

if TYPE_CHECKING:
    from hdp.plan.cost.topology import Topology


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


def ring_key(plan: Plan, mb: MicroBatch) -> tuple:
    """What a ring micro-batch's time depends on: its rings and its whole sequences.

    Every member of a ring has the same key (a static CP group has thousands of identical
    members), so times are computed once per key."""
    ring_seqs = {plan.rings[g].seq for g in mb.rings}
    return mb.rings, tuple(s.seq for s in mb.segments if s.seq not in ring_seqs)


def micro_batch_times(plan: Plan, cost: CostModel) -> list[list[float]]:
    """``micro_batch_time`` of every micro-batch, per rank; ring micro-batches once per ring_key."""
    cache: dict[tuple, float] = {}

    def timed(mb: MicroBatch) -> float:
        if not mb.rings:
            return micro_batch_time(plan, mb, cost)
        key = ring_key(plan, mb)
        t = cache.get(key)
        if t is None:
            t = cache[key] = micro_batch_time(plan, mb, cost)
        return t

    return [[timed(mb) for mb in rp.micro_batches] for rp in plan.ranks]


def estimate(plan: Plan, cost: CostModel, topology: "Topology | None" = None) -> tuple[float, float]:
    """(predicted step time, lower bound) under the cost model.

    The cost model holds the layers of one pipeline stage, so a micro-batch's time t is its time
    on every stage; a 1F1B pipeline of P stages adds a bubble of (P-1) times its largest t.
    The bound (``time_bound``) covers compute on the fewest ranks without offloading and no
    pipeline bubble: see docs/plan-format.md, "What the bounds cover".
    With a ``topology`` the prediction adds every ring member's exposed transfers by the ring's
    algorithm and placement (``hdp.plan.cost.ringcomm``); the bound stays compute only.
    """
    p = plan.pipeline_stages
    times = micro_batch_times(plan, cost)
    if topology is not None:
        times = _with_ring_transfers(plan, cost, topology, times)
    rep = replay(plan, times)
    bubble = [(p - 1) * max(t, default=0.0) for t in times]
    predicted = max((f + b for f, b in zip(rep.finish, bubble)), default=0.0)
    return predicted, time_bound([s.length for s in plan.sequences], plan.num_ranks, plan.capacity_tokens, cost, p)


def time_bound(lengths: list[int], num_ranks: int, capacity: int, cost: CostModel, stages: int = 1) -> float:
    """The plan-independent bound in cost-model seconds (docs/plan-format.md): every sequence on
    ceil(L / C) ranks without offloading, compute only, no per-micro-batch overhead; with
    ``stages`` > 1, the pipeline drain of the heaviest items (``bound_from_items``).

    Cached: the planner asks for it once for the offload cap and once per candidate plan."""
    return _time_bound(tuple(lengths), num_ranks, capacity, cost, stages)


@functools.lru_cache(maxsize=8)
def _time_bound(lengths: tuple[int, ...], num_ranks: int, capacity: int, cost: CostModel, stages: int) -> float:
    items = []
    for n in lengths:
        k = -(-n // capacity)
        items.append((cost.seq_time(n, k), k))
    return bound_from_items(items, num_ranks, stages)


def area_floor(lengths: list[int], num_ranks: int, capacity: int, cost: CostModel) -> float:
    """A bound for every plan of every strategy, in cost-model seconds: each sequence's compute
    rank-seconds at the fewest ranks the most offloading allows, spread evenly over all ranks.

    ``time_bound`` covers fewest-ranks plans only (static, pow2 and hdp-wide give rings more ranks
    and can fall below it). Rank-seconds only grow with more ranks (smaller blocks and shares run at
    a lower measured efficiency), so no plan does less compute; the floor is loose where a long
    sequence cannot finish in time on so few ranks."""
    from hdp.plan.schedule.sharding import place

    total = 0.0
    for n in lengths:
        k = place(n, capacity, cost, offload=True).ranks
        total += k * cost.seq_time(n, k)
    return total / num_ranks


def _with_ring_transfers(plan: Plan, cost: CostModel, topology: "Topology", times: list[list[float]]) -> list[list[float]]:
    """``times`` plus each ring micro-batch's exposed ring transfers (each ring alone)."""
    from hdp.plan.cost.ringcomm import links_of, member_exposure_s
    from hdp.plan.cost.topology import ring_shape

    links = links_of(topology)
    per_ring = []
    for ring in plan.rings:
        m, g = ring_shape(ring.ranks, topology.ranks_per_node)
        per_ring.append(member_exposure_s(cost, plan.sequences[ring.seq].length, ring.size, ring.algo, m, g, links))
    return [[t + sum(per_ring[g] for g in mb.rings) for t, mb in zip(ts, rp.micro_batches)]
            for ts, rp in zip(times, plan.ranks)]
