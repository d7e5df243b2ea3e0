"""The simulator: replays plans through the cost model on a virtual cluster (no torch)."""

from hdp.sim.cluster import Cluster
from hdp.sim.step import StepResult, simulate_step
from hdp.sim.strategies import SIM_STRATEGIES, plan_strategy

__all__ = ["Cluster", "SIM_STRATEGIES", "StepResult", "plan_strategy", "simulate_step"]
