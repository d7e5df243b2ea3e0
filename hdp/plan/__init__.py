"""Planning: cost model, data-aware sharding, balance scheduler, baselines. Never imports torch."""

from hdp.plan.cost.cost_model import CostModel, build_cost_model
from hdp.plan.cost.device import DeviceProfile, load_profile
from hdp.plan.cost.model_config import ModelConfig, get_model
from hdp.plan.planner import make_plan
from hdp.plan.schedule.sharding import PlanError
from hdp.plan.strategies import STRATEGIES, Strategy, get_strategy
from hdp.plan.types import MicroBatch, Plan, RankPlan, Ring, Segment, Sequence

__all__ = [
    "CostModel", "DeviceProfile", "MicroBatch", "ModelConfig", "Plan", "PlanError", "RankPlan", "Ring",
    "STRATEGIES", "Segment", "Sequence", "Strategy", "build_cost_model", "get_model", "get_strategy",
    "load_profile", "make_plan",
]
