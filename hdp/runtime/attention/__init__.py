"""The one attention call the model makes per layer (``dispatch.hdp_attention``) on a micro-batch:

- ``layout``: where every token of a micro-batch lives on this rank (whole documents, ring pieces);
- ``matmul_attention``, ``pair_kernels``, ``doc_attention``: exact local attention, no communication;
- ``ring/``: ring attention over point-to-point sends, flat, two-level and bidirectional.

May import: ``hdp.plan``, ``hdp.runtime.parallel``, torch.
"""


def __getattr__(name: str) -> object:
    """The old module ``hdp.runtime.attention`` is now this package: its names resolve lazily from
    ``dispatch`` for one release, so old imports work and ``import`` of the package stays cheap."""
    if name in ("MicroBatchAttention", "RING_ATTENTION", "hdp_attention"):
        import importlib

        return getattr(importlib.import_module("hdp.runtime.attention.dispatch"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
