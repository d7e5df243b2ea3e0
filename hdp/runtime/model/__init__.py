"""The model a run trains: the built-in LLaMA-style ``decoder``, a Hugging Face causal LM behind the
same interface (``hf_model`` with ``hf_attention``), ``--export-hf`` (``hf_export``), and ``source``,
which picks one from the config.

May import: ``hdp.plan``, ``hdp.runtime.config``, ``hdp.runtime.attention``, torch, transformers (lazily).
"""


def __getattr__(name: str) -> object:
    """The old module ``hdp.runtime.model`` is now this package: its names resolve lazily from
    ``decoder`` for one release, so old imports work and ``import`` of the package stays cheap."""
    if name in ("Attention", "AttentionFn", "Block", "Decoder", "LayerContext", "MLP", "RMSNorm", "Trunk", "apply_rope", "build_model", "default_attention", "init_weights", "rope_tables"):
        import importlib

        return getattr(importlib.import_module("hdp.runtime.model.decoder"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
