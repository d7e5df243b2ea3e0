"""Which ring algorithm a ring runs: the plan's choice, where the ring's shape allows it, else flat.

The rule itself is ``hdp.plan.cost.topology.effective_algo``, shared with the planner; here it is applied
to a plan (``hdp train --ring-algo`` on a plan made without one) and counted for the metrics
(``rings_by_algo``), so the planner, ring attention and the metrics agree.

* ``two-level`` needs a node-aligned ring: its members lie on m >= 2 nodes (rank r is on node
  r // gpus_per_node) with the same g >= 2 members on each. Any such ring works whatever the order of
  its ranks: a member's zig-zag pieces only decide which pairs of pieces are visible, never where a
  block travels, so positions are grouped by node (nodes in order of first appearance, members of
  a node in ring order) into an m x g grid. Anything else runs flat (one member per node, or a
  ring inside one node, *is* the flat ring; uneven nodes have no parallel outer rings).
* ``bidirectional`` needs two KV heads to split into two halves; with one it runs flat.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hdp.plan.cost.topology import effective_algo, node_grid
from hdp.plan.types import RING_ALGOS, Plan

__all__ = ["effective_algo", "node_grid", "rings_by_algo", "with_ring_algo"]

def with_ring_algo(plan: Plan, algo: str | None, gpus_per_node: int | None,
                   num_kv_heads: int | None = None) -> Plan:
    """``plan`` with ``gpus_per_node`` recorded and every ring set to ``algo`` where it can run it.

    ``algo=None`` keeps each ring's own algorithm (a plan from a planner that chose per ring);
    ``gpus_per_node=None`` keeps the plan's. ``num_kv_heads`` (None: unknown) lets bidirectional
    rings of a one-KV-head model be recorded as what they run, flat.
    """
    if algo is not None and algo not in RING_ALGOS:
        raise ValueError(f"--ring-algo must be one of {', '.join(RING_ALGOS)}, got {algo!r}")
    if gpus_per_node is not None and gpus_per_node < 0:
        raise ValueError(f"--gpus-per-node must be >= 1, got {gpus_per_node}")
    gpn = plan.gpus_per_node if gpus_per_node is None else gpus_per_node
    heads = 2 if num_kv_heads is None else num_kv_heads
    rings = tuple(replace(r, algo=effective_algo(r.algo if algo is None else algo, r.ranks, gpn, heads))
                  for r in plan.rings)
    if gpn == plan.gpus_per_node and rings == plan.rings:
        return plan
    return replace(plan, gpus_per_node=gpn, rings=rings)


def rings_by_algo(plan: Plan, num_kv_heads: int) -> dict[str, int]:
    """How many of the plan's rings run each algorithm (what ring attention executes), e.g. {"flat": 1, "two-level": 2}."""
    counts = Counter(effective_algo(r.algo, r.ranks, plan.gpus_per_node, num_kv_heads) for r in plan.rings)
    return {a: counts[a] for a in RING_ALGOS if counts[a]}
