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


def test_ring_pair_backward_with_the_fused_forwards_out_and_lse():
    """The ring's own sequence (issue 19, item 1): fused forward, then the fused backward on its out/lse."""
    from hdp.runtime.attention.pair_kernels import pair_backward, pair_forward

    dev = torch.device("cuda", torch.cuda.current_device())
    g = torch.Generator(device=dev).manual_seed(2)
    q, dout = (torch.randn(300, 8, 64, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(300, 2, 64, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(2))
    for causal in (True, False):
        out, lse = pair_forward(q, k, v, causal, 0.125, "cuda_flash")
        fused = pair_backward(dout, q, k, v, out, lse, causal, 0.125, "cuda_flash")
        exact = pair_backward(dout, q, k, v, out, lse, causal, 0.125, "matmul")
        for a, b in zip(fused, exact):
            torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2)


def test_document_block_mask_on_cuda_equals_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    from hdp.runtime.attention.doc_attention import document_block_mask

    dev = torch.device("cuda", torch.cuda.current_device())
    lengths = [1, 300, 17, 0, 1024, 64]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=dev), torch.tensor(lengths, device=dev))
    dense = create_block_mask(lambda b, h, q, kv: (doc[q] == doc[kv]) & (q >= kv), None, None, cu[-1], cu[-1],
                              device=dev)
    ours = document_block_mask(cu, dev)
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        torch.testing.assert_close(getattr(ours, name), getattr(dense, name), rtol=0, atol=0, msg=name)


def test_model_initialised_on_cuda_has_the_cpu_weights():
    """Built on meta, initialised on the GPU: the same values as the CPU build, bit for bit (item 10)."""
    from hdp.plan import get_model
    from hdp.runtime.model.decoder import build_model

    dev = torch.device("cuda", torch.cuda.current_device())
    for dtype in (torch.bfloat16, torch.float32):
        on_gpu = build_model(get_model("small"), dtype=dtype, device=dev, seed=5)
        on_cpu = build_model(get_model("small"), dtype=dtype, device=torch.device("cpu"), seed=5)
        for (name, a), (_, b) in zip(on_gpu.named_parameters(), on_cpu.named_parameters()):
            assert a.device == dev and torch.equal(a.cpu(), b), name


def test_resume_on_cuda_restores_every_gpu_buffer(tmp_path):
    """The staging path with real GPU shards (item 2): a fresh optimizer's GPU buffers get the saved values."""
    import torch.distributed as dist

    from hdp.plan import get_model
    from hdp.runtime.checkpoint import files, state
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.model.decoder import build_model
    from hdp.runtime.optim.zero import ShardedAdamW

    dev = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        def make() -> ShardedAdamW:
            return ShardedAdamW(build_model(get_model("tiny"), dtype=torch.bfloat16, device=dev, seed=0), lr=1e-3,
                                zero=1)

        def flat(o: ShardedAdamW) -> dict[str, torch.Tensor]:
            return {"param": o.flat_param[: o.numel], "master": o.master[: o.numel],
                    "exp_avg": o.exp_avg[: o.numel], "exp_avg_sq": o.exp_avg_sq[: o.numel]}

        config = TrainConfig(model="tiny", dtype="bfloat16", save_dir=str(tmp_path / "ck"), zero=1)
        saved = make()
        for t in flat(saved).values():
            t.copy_(torch.rand(t.shape, device=dev) + 0.5)
        saved.num_steps = 4
        expected = {k: v.clone() for k, v in flat(saved).items()}
        state.Checkpointer(config, saved, "data", 0, 1).save(2)
        fresh = make()
        assert state.Checkpointer(config, fresh, "data", 0, 1).restore(files.step_dir(config.save_dir, 2)) == 2
        assert fresh.num_steps == 4
        for name, t in flat(fresh).items():
            assert t.device == dev and torch.equal(t, expected[name]), name
    finally:
        dist.destroy_process_group()
