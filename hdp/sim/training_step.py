"""Discrete-event model of one training step of a plan.

Each HDP rank runs its micro-batches in plan order (``hdp.plan.replay``: a ring micro-batch starts
when its last member arrives, docs/plan-format.md rule 5); a micro-batch lasts its compute plus exposed
communication (``microbatch.py``). With pipelines a rank's micro-batches also pay the 1F1B bubble
(``pipeline.py``). All ranks then meet at the gradient all-reduce, so the step ends at the slowest
rank plus the all-reduce. Every rank's step time splits exactly into

    compute + exposed comm (ring, TP, offload, grad sync) + idle (ring wait, PP bubble, DP bubble).

Before the replay, offload copies are re-timed on shared links (``contention.py``) and, with a
``Noise``, every kernel gets its seeded noise (``noise.py``); a ring member's wait for a slower
member inside a ring micro-batch counts as ring wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hdp.plan.cost.cost_model import ATTN_FWD_SHARE, LINEAR_FWD_SHARE, CostModel
from hdp.plan.estimate import area_floor, time_bound
from hdp.plan.replay import replay
from hdp.plan.types import Plan
from hdp.sim.cluster import Cluster
from hdp.sim.contention import contend
from hdp.sim.microbatch import BF16, MicroBatchTime, MicroBatchTimer
from hdp.sim.noise import Noise, apply_noise
from hdp.sim.pipeline import one_f_one_b


@dataclass(frozen=True, slots=True)
class RankBreakdown:
    compute_s: float
    comm_s: float
    """Exposed ring, TP and offload communication inside micro-batches."""
    ring_wait_s: float
    pp_bubble_s: float
    dp_bubble_s: float
    """Waiting for the slowest rank before the gradient all-reduce."""


@dataclass(frozen=True, slots=True)
class StepResult:
    strategy: str
    step_time_s: float
    grad_sync_s: float
    lower_bound_s: float
    area_floor_s: float
    """``hdp.plan.estimate.area_floor`` plus the gradient sync: a bound for every strategy."""
    """Plan-independent bound: compute of every sequence on ceil(L / C) ranks (docs/plan-format.md),
    with the pipeline drain when pp > 1, + sync."""
    ranks: tuple[RankBreakdown, ...]
    starts: tuple[tuple[float, ...], ...]
    """Start of every micro-batch, per rank (for timelines)."""
    times: tuple[tuple[MicroBatchTime, ...], ...]
    model_flops: float
    tokens: int

    def totals(self) -> dict[str, float]:
        """Seconds summed over ranks, per category; they add up to num_ranks * step_time."""
        out = {"compute": 0.0, "comm": 0.0, "grad_sync": 0.0, "ring_wait": 0.0, "pp_bubble": 0.0, "dp_bubble": 0.0}
        for r in self.ranks:
            out["compute"] += r.compute_s
            out["comm"] += r.comm_s
            out["ring_wait"] += r.ring_wait_s
            out["pp_bubble"] += r.pp_bubble_s
            out["dp_bubble"] += r.dp_bubble_s
        out["grad_sync"] = self.grad_sync_s * len(self.ranks)
        return out


def model_flops(plan: Plan, cost: CostModel) -> float:
    """6 * params * tokens + causal attention (fwd 2*h*s^2 per layer, x3 for fwd+bwd)."""
    m = cost.model
    flops = 6.0 * m.num_params * plan.total_tokens
    for s in plan.sequences:
        flops += 3.0 * m.num_layers * m.attention_flops_fwd(s.length)
    return flops


def grad_sync_time(cost: CostModel, cluster: Cluster) -> float:
    """bf16 gradients of one GPU's parameter shard, all-reduced over the HDP ranks."""
    return cluster.dp_all_reduce(cost.model.num_params / (cost.tp * cost.pp) * BF16)


def clean_times(plan: Plan, cost: CostModel, cluster: Cluster) -> list[list[MicroBatchTime]]:
    """Every micro-batch's time without noise, offload copies on shared links."""
    if plan.num_ranks != cluster.num_ranks:
        raise ValueError(f"the plan has {plan.num_ranks} ranks but the cluster {cluster.num_ranks} HDP ranks")
    timer = MicroBatchTimer(plan, cost, cluster)
    times = [[timer(mb) for mb in rp.micro_batches] for rp in plan.ranks]
    return [tuple(ts) for ts in contend(plan, cost, cluster, timer, times)]


def simulate_step(plan: Plan, cost: CostModel, cluster: Cluster, noise: Noise | None = None, step: int = 0,
                  clean: list[list[MicroBatchTime]] | None = None) -> StepResult:
    """One step of ``plan``; ``noise`` (seeded by its seed and ``step``) on every kernel when active.
    ``clean``: ``clean_times`` of the plan, when several noise seeds time the same plan."""
    times = clean if clean is not None else clean_times(plan, cost, cluster)
    if noise is not None and noise.active:
        times = apply_noise(plan, cost, cluster, noise, step, times)
    rep = replay(plan, [[t.total_s for t in ts] for ts in times])
    p = cluster.pp
    pp_bubble = [0.0] * plan.num_ranks
    if p > 1:
        fwd_share = (ATTN_FWD_SHARE + LINEAR_FWD_SHARE) / 2
        act = cost.model.hidden_size * BF16 / cost.tp
        for r, ts in enumerate(times):
            tot = [t.total_s for t in ts]
            fwd = [fwd_share * t for t in tot]
            bwd = [t - f for t, f in zip(tot, fwd)]
            send = [cluster.p2p(mb.num_tokens * act, r, 0) for mb in plan.ranks[r].micro_batches]
            pp_bubble[r] = one_f_one_b(fwd, bwd, p, send) - sum(tot)
    finish = [f + b for f, b in zip(rep.finish, pp_bubble)]
    end = max(finish, default=0.0)
    sync = grad_sync_time(cost, cluster)
    ranks = []
    for r, ts in enumerate(times):
        compute = math.fsum(t.compute_s for t in ts)
        comm = math.fsum(t.comm_s for t in ts)
        sync_wait = math.fsum(t.sync_wait_s for t in ts)
        ranks.append(RankBreakdown(compute, comm, rep.wait[r] + sync_wait, pp_bubble[r], end - finish[r]))
    return StepResult(
        strategy=plan.strategy,
        step_time_s=end + sync,
        grad_sync_s=sync,
        lower_bound_s=time_bound([s.length for s in plan.sequences], plan.num_ranks, plan.capacity_tokens, cost,
                                 cluster.pp) + sync,
        area_floor_s=area_floor([s.length for s in plan.sequences], plan.num_ranks, plan.capacity_tokens, cost) + sync,
        ranks=tuple(ranks),
        starts=rep.starts,
        times=tuple(times),
        model_flops=model_flops(plan, cost),
        tokens=plan.total_tokens,
    )
