"""Plan and simulate several strategies over several steps: the library entry point of ``hdp simulate``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.planner import make_plan
from hdp.plan.schedule.sharding import PlanError
from hdp.plan.strategies import Strategy, get_strategy
from hdp.sim.cluster import Cluster
from hdp.sim.report import add_speedups, summarise
from hdp.sim.noise import Noise
from hdp.sim.training_step import StepResult, clean_times, simulate_step


@dataclass
class Simulation:
    table: dict[str, dict[str, float]]
    """strategy -> summary (means over steps)."""
    last: dict[str, StepResult]
    """strategy -> the last step's result (for timelines)."""
    simulation_time_s: float
    """Wall time of planning and simulating everything."""
    skipped: dict[str, PlanError] = field(default_factory=dict)
    """strategy -> why it cannot plan the batches on this cluster (it is left out of the table)."""
    static_flat: dict[str, float] | None = None
    """The static mesh with flat rings (the baseline of ``speedup_vs_flat_static``), when asked for."""


def simulate(batches: list[list[int]], cluster: Cluster, cost: CostModel, capacity: int,
             strategies: Sequence[str | Strategy], max_len: int | None, seed: int = 0,
             on_plan: Callable[[str, int], None] | None = None, ring_algo: str | None = None,
             flat_static: bool = False, noise: Noise | None = None, noise_seeds: int = 1) -> Simulation:
    """Plan every batch with every strategy (``hdp.plan.strategies``) and time the plans.

    A strategy that cannot hold some batch on this cluster (a static mesh with no divisor large
    enough, say) is skipped, with the planner's reason in ``skipped``; the others still run.

    ``ring_algo`` (flat, two-level, bidirectional) plans every strategy, baselines included, node-aware
    with that ring algorithm (``hdp.plan.cost.topology``); None plans as before (flat rings, no
    topology). ``flat_static`` also plans the static mesh with flat rings (``Simulation.static_flat``),
    so every row gives its speedup over static with the same algorithm and over a flat-ring static.

    ``noise`` (when active) times every plan ``noise_seeds`` times, noise seeds ``noise.seed ..
    noise.seed + noise_seeds - 1``: the table's figures are means over steps and noise seeds, with
    ``step_time_mean_s`` / ``step_time_worst_s`` the mean and worst over noise seeds of the mean step,
    ``step_time_clean_s`` the same plans' mean step without noise.
    Without active noise every seed would give the same numbers: the plans are timed once."""
    if noise_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {noise_seeds}")
    seeds_noisy = noise is not None and noise.active
    seeds = noise_seeds if seeds_noisy else 1
    if cost.tp != cluster.tp or cost.pp != cluster.pp:
        raise ValueError("the cost model and the cluster disagree on tp/pp")
    start = time.perf_counter()
    table: dict[str, dict[str, float]] = {}
    last: dict[str, StepResult] = {}
    skipped: dict[str, PlanError] = {}
    topology = None if ring_algo is None else cluster.topology(ring_algo, max(1, cost.model.num_kv_heads // cost.tp))
    runs = [(get_strategy(s), topology, get_strategy(s).name) for s in strategies]
    if flat_static and ring_algo not in (None, "flat"):
        runs.append((get_strategy("static"), cluster.topology("flat"), "static-flat"))
    for strategy, topo, name in runs:
        by_seed: list[list[StepResult]] = [[] for _ in range(seeds)]
        clean_steps: list[float] = []
        planning = 0.0
        rings = max_ring = 0
        try:
            for step, lengths in enumerate(batches):
                t0 = time.perf_counter()
                plan = make_plan(lengths, cluster.num_ranks, capacity, cost, strategy, max_len=max_len, seed=seed + step,
                                 topology=topo)
                planning += time.perf_counter() - t0
                clean = clean_times(plan, cost, cluster)
                if seeds_noisy:
                    clean_steps.append(simulate_step(plan, cost, cluster, None, step, clean).step_time_s)
                for j, runs_of in enumerate(by_seed):
                    noisy = noise.with_seed(noise.seed + j) if noise is not None else None
                    runs_of.append(simulate_step(plan, cost, cluster, noisy, step, clean))
                rings += len(plan.rings)
                max_ring = max(max_ring, plan.max_ring)
                if on_plan:
                    on_plan(name, step)
        except PlanError as e:
            skipped[name] = e
            continue
        results = [r for runs_of in by_seed for r in runs_of]
        table[name] = summarise(results, cluster.gpus, cost.device.peak_tflops, planning / len(batches),
                                max_ring, rings // len(batches))
        per_seed = [sum(r.step_time_s for r in runs_of) / len(runs_of) for runs_of in by_seed]
        table[name] |= {"step_time_mean_s": sum(per_seed) / seeds, "step_time_worst_s": max(per_seed),
                        "noise_seeds": seeds}
        if clean_steps:
            table[name]["step_time_clean_s"] = sum(clean_steps) / len(clean_steps)
        last[name] = by_seed[0][-1]
    skipped.pop("static-flat", None)  # static itself is skipped for the same reason
    static_flat = table.pop("static-flat", None)
    last.pop("static-flat", None)
    add_speedups(table, static_flat)
    return Simulation(table, last, time.perf_counter() - start, skipped, static_flat)
