"""Checkpoints: a run's state saved and restored with torch.distributed.checkpoint (``state``), and
checkpoint directories on disk without torch (``files``: naming, newest, validation, pruning), and what a
resumed run must share with its checkpoint (``compare``: fingerprints, not spellings; ``--override``).

May import: ``hdp.plan``, ``hdp.runtime.config``, ``hdp.runtime.optim``, torch.
"""


def __getattr__(name: str) -> object:
    """The old module ``hdp.runtime.checkpoint`` is now this package: its names resolve lazily from
    ``state`` for one release, so old imports work and ``import`` of the package stays cheap."""
    if name in ("Checkpointer", "STATES", "after_step", "exact_config", "layout_of", "open_checkpoint"):
        import importlib

        return getattr(importlib.import_module("hdp.runtime.checkpoint.state"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
