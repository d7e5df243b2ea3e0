"""The simulator: replays plans through the cost model on a virtual cluster (no torch)."""

from hdp.sim.cluster import Cluster
from hdp.sim.compare import Simulation, simulate
from hdp.sim.training_step import StepResult, simulate_step

__all__ = ["Cluster", "Simulation", "StepResult", "simulate", "simulate_step"]
