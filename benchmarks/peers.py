"""Distinct P2P peers per rank over many planned steps (issue 19, item 6): the planner alone, no torch.

Rings change every step, so a rank talks to new peers step after step. NCCL connects each new pair
lazily, on its first transfer (the host blocks while it does), and keeps per-peer buffers for the
rest of the run that PyTorch's allocator does not see (bounded by NCCL_BUFFSIZE and the channels per
peer: docs/gpu.md). This counts, for each rank, the distinct peers it sends to or receives from over
``--steps`` planned steps (each step a fresh batch, seed = step), with the peers each ring algorithm
really uses: flat and bidirectional rings their two ring neighbours; two-level rings the inner
neighbours in the node and the outer ones (same local index on the neighbouring nodes).

    PYTHONPATH=. python benchmarks/peers.py [--gpus 1024] [--gpus-per-node 8] [--steps 20] [--dist byted] \
        [--strategy hdp] [--ring-algo two-level] [--out benchmarks/results/peers.json]

Prints one JSON object: the distribution of peers per rank after 1, 5, ... steps (max, mean,
median), the new peers per step (connections NCCL makes lazily that step, summed over ranks), and
how many of the peers are on another node (each needs NIC-side buffers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model, make_plan
from hdp.plan.cost.topology import Topology, effective_algo, node_grid
from hdp.plan.types import Plan


def ring_peers(ranks: tuple[int, ...], algo: str, gpus_per_node: int) -> dict[int, set[int]]:
    """Who each member of one ring exchanges blocks with (both directions), by the algorithm it runs."""
    k = len(ranks)
    grid = node_grid(ranks, gpus_per_node) if algo == "two-level" else None
    peers: dict[int, set[int]] = {r: set() for r in ranks}
    if grid is None:  # flat, bidirectional, or two-level falling back to flat: the ring neighbours
        for i, r in enumerate(ranks):
            peers[r] |= {ranks[(i + 1) % k], ranks[(i - 1) % k]}
    else:
        m, g = len(grid), len(grid[0])
        for a in range(m):
            for b in range(g):
                r = ranks[grid[a][b]]
                peers[r] |= {ranks[grid[a][(b + 1) % g]], ranks[grid[a][(b - 1) % g]],
                             ranks[grid[(a + 1) % m][b]], ranks[grid[(a - 1) % m][b]]}
    for r in ranks:
        peers[r].discard(r)
    return peers


def plan_peers(plan: Plan, gpus_per_node: int, kv_heads: int) -> dict[int, set[int]]:
    """Every rank's peers in one step's plan."""
    out: dict[int, set[int]] = {}
    for ring in plan.rings:
        algo = effective_algo(ring.algo, ring.ranks, gpus_per_node, kv_heads)
        for r, ps in ring_peers(ring.ranks, algo, gpus_per_node).items():
            out.setdefault(r, set()).update(ps)
    return out


def summary(counts: list[int]) -> dict:
    return {"max": max(counts), "mean": round(statistics.fmean(counts), 2), "median": statistics.median(counts)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=1024)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dist", default="byted")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per step (default: 32K per GPU)")
    ap.add_argument("--max-len", type=int, default=2**21)
    ap.add_argument("--model", default="llama-7b")
    ap.add_argument("--strategy", default="hdp")
    ap.add_argument("--ring-algo", default="two-level")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cost = build_cost_model(args.model)
    topology = Topology(args.gpus_per_node, args.ring_algo, kv_heads=cost.model.num_kv_heads)
    capacity = cost.derived_capacity(args.gpus)
    tokens = args.tokens or 32768 * args.gpus
    seen: dict[int, set[int]] = {r: set() for r in range(args.gpus)}
    new_per_step, by_steps = [], {}
    t0 = time.perf_counter()
    for step in range(args.steps):
        lengths = sample_lengths(args.dist, tokens, args.max_len, step)
        plan = make_plan(lengths, args.gpus, capacity, cost, args.strategy, seed=step, topology=topology)
        new = 0
        for r, ps in plan_peers(plan, args.gpus_per_node, topology.kv_heads).items():
            new += len(ps - seen[r])
            seen[r] |= ps
        new_per_step.append(new)
        if step + 1 in (1, 5, 10, 20, 50, 100) or step + 1 == args.steps:
            by_steps[step + 1] = summary([len(p) for p in seen.values()])
    remote = [sum(p // args.gpus_per_node != r // args.gpus_per_node for p in ps) for r, ps in seen.items()]
    out = {"gpus": args.gpus, "gpus_per_node": args.gpus_per_node, "steps": args.steps, "dist": args.dist,
           "tokens_per_step": tokens, "model": args.model, "strategy": args.strategy, "ring_algo": args.ring_algo,
           "capacity": capacity, "peers_per_rank_after_steps": by_steps, "new_connections_per_step": new_per_step,
           "remote_peers_per_rank": summary(remote), "wall_s": round(time.perf_counter() - t0, 2)}
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
