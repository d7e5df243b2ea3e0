"""What things cost, for planning and simulation: model shapes (``model_config``), device profiles
(``device``), FLOPs (``flops``), bytes per rank (``memory``), time and activation memory of sequences
on one rank (``cost_model``), exposed ring transfers (``ringcomm``), where ranks sit (``topology``).

May import: ``hdp.plan``'s root data modules (types, zigzag). Never torch, never the schedule.
"""


def __getattr__(name: str) -> object:
    """The old module ``hdp.plan.cost`` is now this package: its names resolve lazily from
    ``cost_model`` for one release, so ``from hdp.plan.cost import CostModel`` still works."""
    import importlib

    module = importlib.import_module("hdp.plan.cost.cost_model")
    if hasattr(module, name):
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
