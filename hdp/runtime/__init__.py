"""Runtime: executes a Plan with torch.distributed (model, HDP attention, train step).

Names are imported lazily so ``import hdp.runtime`` stays cheap and ``hdp.plan`` never pulls in torch.
No export shares its name with a submodule (importing the submodule would shadow it): the function
``doc_attention`` is imported from ``hdp.runtime.doc_attention``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "hdp_attention": "hdp.runtime.attention",
    "AttentionLayout": "hdp.runtime.layout",
    "RingSlot": "hdp.runtime.layout",
    "Span": "hdp.runtime.layout",
    "build_layout": "hdp.runtime.layout",
    "token_index": "hdp.runtime.layout",
    "ring_attention": "hdp.runtime.ring",
    "RingComm": "hdp.runtime.ring_comm",
    "RingCommError": "hdp.runtime.ring_comm",
    "RingTimeoutError": "hdp.runtime.ring_comm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hdp.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
