"""Ring sizes that fill whole nodes, so that two-level rings apply (``hdp.plan.cost.topology``).

A two-level ring needs m >= 2 nodes with the same g members on each. A ring of prime or awkward
size finds no such layout, falls back to a flat ring and exposes its inter-node transfers (one NIC
carries each step). Two ways to a multiple of the node size:

* ``round_down``, for the fewest-ranks strategies that offload (``hdp``): offload one layer more and
  take the multiple of the node just below the fewest ranks. The micro-batch's token limit is then
  the largest member's tokens, so k is still the fewest ranks for it (rule 4 holds).
* ``round_up``, for ``hdp-wide``: the multiple just above (fewer tokens each; not rule 4).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.schedule.critical import member_time
from hdp.plan.schedule.sharding import Placement, hold, max_offload_layers
from hdp.plan.cost.topology import Topology
from hdp.plan.zigzag import max_member_tokens, ranks_needed


def _node(topology: Topology) -> int:
    """The node size when rings are two-level (0: nothing to round)."""
    return topology.ranks_per_node if topology.ring_algo == "two-level" and topology.ranks_per_node >= 2 else 0


def round_down(lengths: Sequence[int], placements: list[Placement], capacity: int, cost: CostModel,
               topology: Topology, time_cap: float | None) -> list[Placement]:
    """Each ring wider than a node on the multiple of the node below its size, offloading the
    fewest layers that hold it there, when that makes its per-member time (compute and exposed
    transfers for the shape it gets, ``critical.member_time``) shorter than on its own size, and
    does not take it past ``time_cap`` (the offload cap) unless it was past it already."""
    g = _node(topology)
    if not g:
        return placements
    out = []
    for length, p in zip(lengths, placements, strict=True):
        if p.ranks > g and p.ranks % g:
            k = p.ranks // g * g
            held = hold(length, k, capacity, cost, max_offload_layers(length, capacity, cost))
            if held is not None and held.offload_layers:
                held = dataclasses.replace(held, token_limit=max_member_tokens(length, k))
                now, then = member_time(cost, topology, length, p.ranks), member_time(cost, topology, length, k)
                if (ranks_needed(length, held.token_limit) == k and then < now
                        and (time_cap is None or then <= time_cap or now > time_cap)):
                    p = held
        out.append(p)
    return out


def round_up(lengths: Sequence[int], placements: list[Placement], num_ranks: int,
             topology: Topology) -> list[Placement]:
    """Each ring wider than a node on the multiple of the node above its size (fewer tokens each).
    The zig-zag floor cuts can give a member of the wider ring one token more than ceil(L/k), so
    the size grows by whole nodes until every member fits its token limit (or the ring keeps its
    size when no multiple fits the pool)."""
    g = _node(topology)
    if not g:
        return placements
    out = []
    for length, p in zip(lengths, placements, strict=True):
        if p.ranks > g and p.ranks % g:
            k = -(-p.ranks // g) * g
            while k <= num_ranks and max_member_tokens(length, k) > p.token_limit:
                k += g
            if k <= num_ranks:
                p = dataclasses.replace(p, ranks=k)
        out.append(p)
    return out
