"""Simulate several strategies over several steps: the library entry point of ``hdp simulate``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from hdp.plan.cost import CostModel
from hdp.sim.cluster import Cluster
from hdp.sim.report import add_speedups, summarise
from hdp.sim.step import StepResult, simulate_step
from hdp.sim.strategies import plan_strategy


@dataclass
class Simulation:
    table: dict[str, dict[str, float]]
    """strategy -> summary (means over steps)."""
    last: dict[str, StepResult]
    """strategy -> the last step's result (for timelines)."""
    simulation_time_s: float
    """Wall time of planning and simulating everything."""


def simulate(batches: list[list[int]], cluster: Cluster, cost: CostModel, capacity: int, strategies: list[str],
             max_len: int | None, seed: int = 0, on_plan: Callable[[str, int], None] | None = None) -> Simulation:
    if cost.tp != cluster.tp or cost.pp != cluster.pp:
        raise ValueError("the cost model and the cluster disagree on tp/pp")
    start = time.perf_counter()
    table: dict[str, dict[str, float]] = {}
    last: dict[str, StepResult] = {}
    for name in strategies:
        results = []
        planning = 0.0
        rings = max_ring = 0
        for step, lengths in enumerate(batches):
            t0 = time.perf_counter()
            plan = plan_strategy(name, lengths, cluster.num_ranks, capacity, cost, max_len, seed + step)
            planning += time.perf_counter() - t0
            res = simulate_step(plan, cost, cluster)
            results.append(res)
            rings += len(plan.rings)
            max_ring = max(max_ring, plan.max_ring)
            if on_plan:
                on_plan(name, step)
        table[name] = summarise(results, cluster.gpus, cost.device.peak_tflops, planning / len(batches),
                                max_ring, rings // len(batches))
        last[name] = results[-1]
    add_speedups(table)
    return Simulation(table, last, time.perf_counter() - start)
