"""Which dtype each part of training uses, from the one ``--dtype`` flag.

``bfloat16`` is mixed precision: bf16 parameters and activations for compute, fp32 master weights,
AdamW moments and gradient accumulation/reduction, fp32 loss. A pure-bf16 AdamW step of a 0.02
weight rounds any update below ~1e-4 to nothing; the fp32 master keeps it. ``float32`` and
``float64`` keep everything in that dtype (float64 is the exactness mode).

The default is bfloat16 on accelerators and float32 on CPU (``hdp.runtime.config.default_dtype``).
Where float32 remains on CUDA (``--dtype float32`` there), its matmuls use TF32 tensor cores
(``hdp.runtime.model.source.configure_matmul``, set where each rank builds its model): full fp32
runs at a fraction of TF32's rate on an H100. CPU float32 and float64 stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hdp.plan.cost.memory import master_dtype

_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float64: "float64"}
_DTYPES = {v: k for k, v in _NAMES.items()}


@dataclass(frozen=True, slots=True)
class Precision:
    compute: torch.dtype
    """Parameters and activations as the forward and backward see them."""
    master: torch.dtype
    """Master weights, AdamW moments, gradient accumulation and reduction."""

    @classmethod
    def for_dtype(cls, dtype: torch.dtype) -> "Precision":
        if dtype not in _NAMES:
            raise ValueError(f"unsupported training dtype {dtype}; use one of {', '.join(_DTYPES)}")
        return cls(dtype, _DTYPES[master_dtype(_NAMES[dtype])])

    @property
    def mixed(self) -> bool:
        return self.master != self.compute

    @property
    def loss(self) -> torch.dtype:
        """Logits are upcast for the cross-entropy when the compute dtype is narrower than fp32."""
        return self.master

    def describe(self) -> dict[str, str]:
        """The metrics keys naming the dtypes in use."""
        return {"param_dtype": _NAMES[self.compute], "master_dtype": _NAMES[self.master],
                "grad_reduce_dtype": _NAMES[self.master], "loss_dtype": _NAMES[self.loss]}
