"""Planning: cost model, data-aware sharding, balance scheduler, baselines. Never imports torch."""

from hdp.plan.cost import CostModel, build_cost_model
from hdp.plan.device import DeviceProfile, load_profile
from hdp.plan.model_config import ModelConfig, get_model
from hdp.plan.planner import make_plan
from hdp.plan.sharding import PlanError
from hdp.plan.strategies import STRATEGIES, Strategy, get_strategy
from hdp.plan.types import MicroBatch, Plan, RankPlan, Ring, Segment, Sequence

__all__ = [
    "CostModel", "DeviceProfile", "MicroBatch", "ModelConfig", "Plan", "PlanError", "RankPlan", "Ring",
    "STRATEGIES", "Segment", "Sequence", "Strategy", "build_cost_model", "get_model", "get_strategy",
    "load_profile", "make_plan",
]
