"""GPU kernels of the attention layer against the exact matmul kernel. Skipped cleanly without CUDA."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("causal,nq,nk", [(True, 256, 256), (False, 200, 333), (True, 1, 1)])
def test_cuda_flash_pair_kernel_equals_matmul(causal, nq, nk):
    from hdp.runtime.attention.pair_kernels import choose_kernel, pair_backward, pair_forward

    dev = torch.device("cuda", torch.cuda.current_device())
    g = torch.Generator(device=dev).manual_seed(0)
    q, dout = (torch.randn(nq, 8, 64, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(nk, 2, 64, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(2))
    assert choose_kernel(q) == "cuda_flash"
    fused = pair_forward(q, k, v, causal, 0.125, "cuda_flash")
    exact = pair_forward(q, k, v, causal, 0.125, "matmul")
    torch.testing.assert_close(fused[1], exact[1], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(fused[0], exact[0], rtol=2e-2, atol=2e-2)
    fused_grads = pair_backward(dout, q, k, v, *exact, causal, 0.125, "cuda_flash")
    exact_grads = pair_backward(dout, q, k, v, *exact, causal, 0.125, "matmul")
    for a, b in zip(fused_grads, exact_grads):
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_doc_attention_equals_reference(dtype):
    from hdp.runtime.attention.doc_attention import doc_attention, reference_doc_attention

    dev = torch.device("cuda", torch.cuda.current_device())
    lengths = [1, 300, 17, 1024, 64]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    g = torch.Generator(device=dev).manual_seed(1)
    q = torch.randn(cu[-1], 8, 64, device=dev, generator=g, dtype=dtype)
    k, v = (torch.randn(cu[-1], 2, 64, device=dev, generator=g, dtype=dtype) for _ in range(2))
    out, lse = doc_attention(q, k, v, cu)
    ref_out, ref_lse = reference_doc_attention(q, k, v, cu)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-3)


def test_document_mask_is_built_once_for_all_layers():
    """FlexAttention's block mask (or flash-attn's cu_seqlens) per micro-batch, not per layer."""
    from hdp.plan import get_model
    from hdp.runtime.attention.dispatch import MicroBatchAttention
    from hdp.runtime.attention.layout import build_layout
    from hdp.runtime.model.decoder import build_model
    from tests.conftest import build_plan

    dev = torch.device("cuda", torch.cuda.current_device())
    lengths = [100, 37, 300]
    plan = build_plan(1, lengths, [[("doc", i, 0) for i in range(len(lengths))]])
    batch = MicroBatchAttention(build_layout(plan, 0, 0))
    cfg = get_model("small")
    model = build_model(cfg, dtype=torch.float32, device=dev, seed=0)
    tokens = torch.randint(0, 256, (sum(lengths),), device=dev)
    positions = torch.cat([torch.arange(n, device=dev) for n in lengths])
    model(tokens, positions, batch).float().square().mean().backward()
    assert cfg.num_layers > 1 and dict(batch.docs.builds) == {"block_mask": 1}
