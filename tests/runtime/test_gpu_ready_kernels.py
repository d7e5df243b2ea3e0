"""The CUDA attention paths, run on CPU (issue 19, items 1 and 7).

No GPU here, so the exact CUDA code paths run on ``meta`` tensors (torch's meta kernels check the
arguments' form) and a ``TorchDispatchMode`` records what reaches each op:

* item 1: the flash backward gets ``None`` (undefined) cu_seqlens, the forward's own philox
  tensors, and never a defined zero-length tensor (which sends PyTorch to the varlen kernel);
* item 7: FlexAttention's block mask is built from cu_seqlens without a T x T grid (the biggest
  tensor at 64K tokens stays ~(T/128)^2), without a host sync, equals ``create_block_mask``'s, and
  the compiled flex kernel recompiles a bounded number of times over many lengths.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hdp.runtime.attention import pair_kernels
from hdp.runtime.attention.pair_kernels import pair_backward, pair_forward

pytestmark = pytest.mark.timeout(120)


class OpLog(TorchDispatchMode):
    """Every aten op call with its arguments (and the biggest tensor any op returned)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple, dict]] = []
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((str(func.overloadpacket.__name__), args, kwargs))
        out = func(*args, **kwargs)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out

    def named(self, name: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for n, a, k in self.calls if n == name]


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta", dtype=torch.bfloat16)


@pytest.mark.parametrize("causal,nq,nk", [(True, 64, 64), (False, 40, 72)])
def test_cuda_flash_backward_gets_undefined_cu_seqlens_and_the_forwards_philox_state(causal, nq, nk):
    pair_kernels.flash_rng_state.cache_clear()
    q, dout = _meta(nq, 8, 64), _meta(nq, 8, 64)
    k, v = _meta(nk, 2, 64), _meta(nk, 2, 64)
    with OpLog() as log:
        out, lse = pair_forward(q, k, v, causal, 0.125, "cuda_flash")
        dq, dk, dv = pair_backward(dout, q, k, v, out, lse, causal, 0.125, "cuda_flash")
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    (args, kwargs), = log.named("_scaled_dot_product_flash_attention_backward")
    # Schema: grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k,
    # dropout_p, is_causal, philox_seed, philox_offset, *, scale (torch/_meta_registrations.py).
    assert args[6] is None and args[7] is None
    assert (args[8], args[9], args[10], args[11], kwargs["scale"]) == (nq, nk, 0.0, causal, 0.125)
    assert not any(isinstance(a, torch.Tensor) and a.numel() == 0 for a in args)
    seed, offset = pair_kernels.flash_rng_state(q.device)
    assert args[12] is seed and args[13] is offset
    forwards = log.named("_scaled_dot_product_flash_attention")
    probe = [a for a, _ in forwards if a[0].shape[2] == 1]
    assert probe and (probe[0][0].dtype, seed.dtype, tuple(seed.shape)) == (torch.bfloat16, torch.uint64, (2,))
