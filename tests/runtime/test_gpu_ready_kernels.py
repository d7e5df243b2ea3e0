"""The CUDA attention paths, run on CPU (issue 19, items 1 and 7).

No GPU here, so the exact CUDA code paths run on ``meta`` tensors (torch's meta kernels check the
arguments' form) and a ``TorchDispatchMode`` records what reaches each op:

* item 1: the flash backward gets ``None`` (undefined) cu_seqlens, the forward's own philox
  tensors, and never a defined zero-length tensor (which sends PyTorch to the varlen kernel);
* item 7: FlexAttention's block mask is built from cu_seqlens without a T x T grid (the biggest
  tensor at 64K tokens stays ~(T/128)^2), without a host sync, equals ``create_block_mask``'s, and
  the compiled flex kernel compiles once for every length (a counting backend).
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


def _cu(lengths: list[int]) -> list[int]:
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return cu


@pytest.mark.parametrize("lengths", [[100, 100], [17, 0, 300, 16, 1], [512], [1, 2, 3, 64, 9, 200], [5]])
def test_document_block_mask_equals_create_block_masks(lengths):
    from torch.nn.attention.flex_attention import create_block_mask

    from hdp.runtime.attention.doc_attention import document_block_mask

    cu, cpu = _cu(lengths), torch.device("cpu")
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    dense = create_block_mask(lambda b, h, q, kv: (doc[q] == doc[kv]) & (q >= kv), None, None, cu[-1], cu[-1],
                              device=cpu, BLOCK_SIZE=16)
    ours = document_block_mask(cu, cpu, block=16)
    assert ours.seq_lengths == dense.seq_lengths and ours.BLOCK_SIZE == dense.BLOCK_SIZE
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks",
                 "q_indices", "full_q_num_blocks", "full_q_indices"):
        torch.testing.assert_close(getattr(ours, name), getattr(dense, name), rtol=0, atol=0, msg=name)


def test_document_block_mask_at_64k_tokens_is_subquadratic_and_sync_free():
    """On meta (nothing allocated, and any .item() would raise): the biggest tensor is (T/128)^2, not T^2."""
    from hdp.runtime.attention.doc_attention import PackedDocs

    lengths = [4096] * 8 + [1000, 3000, 17, 28751]
    t = sum(lengths)
    assert t == 65536
    docs = PackedDocs(_cu(lengths))
    with OpLog() as log:
        mask = docs.block_mask_on(torch.device("meta"))
        assert docs.block_mask_on(torch.device("meta")) is mask and dict(docs.builds) == {"block_mask": 1}
    num_blocks = t // 128
    assert log.max_numel <= num_blocks * (num_blocks + 1) < t * t // 10_000  # torch transposes via nb x (nb+1)
    assert all("output_size" in kw for _, kw in log.named("repeat_interleave"))
    assert log.named("repeat_interleave") and not log.named("_local_scalar_dense")


def test_compiled_flex_attention_is_exact_and_compiles_once_for_every_length():
    """The CUDA FlexAttention path on CPU, through a counting backend: one graph for 5 buffer lengths
    of 2 or more blocks; a 1-block buffer (a size-1 dimension, always specialised) adds at most one."""
    from hdp.runtime.attention.doc_attention import PackedDocs, _flex, reference_doc_attention

    torch._dynamo.reset()
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    g = torch.Generator().manual_seed(0)
    for i, lengths in enumerate(([100, 100], [17, 300, 16], [517], [1, 2, 3, 400, 600], [1280], [50, 20])):
        cu = _cu(lengths)
        q = torch.randn(cu[-1], 4, 16, generator=g)
        k, v = torch.randn(2, cu[-1], 2, 16, generator=g)
        out, lse = _flex(q, k, v, PackedDocs(cu), 0.25, backend=counting)
        ref_out, ref_lse = reference_doc_attention(q, k, v, cu, 0.25)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
        if i == 4:
            assert len(graphs) == 1
    assert len(graphs) <= 2
    torch._dynamo.reset()
