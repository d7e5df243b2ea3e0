"""Starting and running the ranks: ``spawn`` (local processes, or this process under torchrun),
``worker`` (what one rank does for a whole run), ``restart`` (``--resume`` and ``--max-restarts``),
``faults`` (the ``HDP_DEBUG_FAULT`` hook the fault tests use).

May import: everything in the runtime (it is the top layer), ``hdp.plan``, ``hdp.data``.
"""


def __getattr__(name: str) -> object:
    """The old module ``hdp.runtime.launch`` is now this package: its names resolve lazily from
    ``spawn`` for one release, so old imports work and ``import`` of the package stays cheap."""
    if name in ("Stopped", "describe_exit", "free_port", "launch", "local_accelerators", "spawn", "watch"):
        import importlib

        return getattr(importlib.import_module("hdp.runtime.launch.spawn"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
