"""Selective activation offloading on CPU: the copy path runs (host buffers separate from the 'device')
and losses and gradients must be bit-identical to training without offloading."""

from __future__ import annotations

import pytest
import torch

from hdp.plan import build_cost_model
from hdp.plan.sharding import place
from hdp.runtime.host_pool import HostBufferPool, size_class
from hdp.runtime.offload import ActivationOffloader, OffloadPlan, offloaded_layers
from tests.runtime.tiny_llama import TinyLlama

NUM_LAYERS = 6
CPU = torch.device("cpu")


def make_model() -> TinyLlama:
    torch.manual_seed(0)
    return TinyLlama(num_layers=NUM_LAYERS).double()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 64, (2, 48), generator=g)
    return tokens, torch.roll(tokens, -1, dims=1)


def step(model: TinyLlama, offloader: ActivationOffloader | None, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    tokens, labels = batch(seed)
    ctx = offloader.layer_context if offloader is not None else None
    loss = model(tokens, labels, layer_context=ctx)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def offloader(model: TinyLlama, ratio: float, pool: HostBufferPool | None = None, **kw: object) -> ActivationOffloader:
    return ActivationOffloader(ratio, NUM_LAYERS, CPU, pool=pool, params=model.parameters(), min_bytes=0, **kw)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_bit_identical_to_no_offload(ratio: float) -> None:
    model = make_model()
    ref_loss, ref_grads = step(model, None)
    with offloader(model, ratio) as off:
        loss, grads = step(model, off)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
    k = len(offloaded_layers(ratio, NUM_LAYERS))
    assert (off.stats.offloaded_tensors > 0) == (k > 0)
    assert off.stats.prefetched_layers == k and off.stats.late_fetches == 0


def test_save_on_cpu_baseline_bit_identical() -> None:
    model = make_model()
    ref_loss, ref_grads = step(model, None)
    with ActivationOffloader(0.0, NUM_LAYERS, CPU, mode="save_on_cpu") as off:
        loss, grads = step(model, off)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_weights_are_never_copied_and_shared_saves_are_copied_once() -> None:
    model = make_model()
    with offloader(model, 1.0) as off:
        step(model, off)
    assert off.stats.skipped_params > 0
    # Per layer: the attention-norm output is saved by q, k and v, the MLP-norm output by gate and up.
    assert off.stats.deduplicated >= 3 * len(off.plan.layers)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert off.stats.offloaded_bytes < 10 * weight_bytes  # sanity: activations only


def test_small_tensors_stay_resident_by_default() -> None:
    model = make_model()
    with ActivationOffloader(1.0, NUM_LAYERS, CPU, params=model.parameters()) as off:  # 1 MiB threshold
        step(model, off)
    assert off.stats.offloaded_tensors == 0 and off.stats.skipped_small > 0


def test_pool_reused_across_steps() -> None:
    model = make_model()
    pool = HostBufferPool(pin_memory=False)
    first = None
    for s in range(4):
        with offloader(model, 0.5, pool) as off:
            step(model, off, seed=s)
        if first is None:
            first = (pool.num_allocations, pool.reserved_bytes)
            assert first[0] > 0
        assert (pool.num_allocations, pool.reserved_bytes) == first
        assert pool.free_bytes == pool.reserved_bytes  # everything returned at the end of the micro-batch


def test_unpack_after_micro_batch_end_raises() -> None:
    model = make_model()
    tokens, labels = batch()
    with offloader(model, 1.0) as off:
        loss = model(tokens, labels, layer_context=off.layer_context)
    with pytest.raises(RuntimeError, match="after its micro-batch ended"):
        loss.backward()
    with pytest.raises(RuntimeError, match="has ended"):
        off.layer_context(0)


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_ratio(ratio: object) -> None:
    with pytest.raises(ValueError, match="outside"):
        ActivationOffloader(ratio, NUM_LAYERS, CPU)  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_layers"):
        OffloadPlan(0.5, 0)
    with pytest.raises(ValueError, match="mode"):
        ActivationOffloader(0.5, NUM_LAYERS, CPU, mode="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pin_memory"):
        ActivationOffloader(0.5, NUM_LAYERS, CPU, pool=HostBufferPool(pin_memory=True))
    with pytest.raises(IndexError):
        ActivationOffloader(0.5, NUM_LAYERS, CPU).layer_context(NUM_LAYERS)


def test_host_memory_too_small_fails_before_the_step() -> None:
    with pytest.raises(RuntimeError, match="host memory"):
        ActivationOffloader(1.0, NUM_LAYERS, CPU, act_bytes_per_layer=2.0**60)
    ActivationOffloader(0.0, NUM_LAYERS, CPU, act_bytes_per_layer=2.0**60)  # nothing offloaded: no check


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_pinned_memory_unavailable_fails_before_the_step() -> None:
    with pytest.raises(RuntimeError):
        ActivationOffloader(0.5, NUM_LAYERS, "cuda:0")
    pool = HostBufferPool(pin_memory=True)
    with pytest.raises(RuntimeError, match="pinned host memory"):
        pool.check_pinnable()


def test_layer_choice() -> None:
    assert offloaded_layers(0.0, 32) == ()
    assert offloaded_layers(1.0, 32) == tuple(range(1, 31))
    assert offloaded_layers(0.5, 32) == tuple(range(1, 31, 2))
    assert offloaded_layers(1.0, 2) == ()
    for l in range(3, 40):
        for j in range(0, l - 1):
            layers = offloaded_layers(j / (l - 2), l)
            assert len(layers) == j and len(set(layers)) == j
            assert all(1 <= x <= l - 2 for x in layers)
            if j < l - 2:
                assert max(layers, default=0) < l - 2  # the prefetch of the top one starts after layer l-1 is freed


def test_planner_ratios_are_whole_layers() -> None:
    cost = build_cost_model("llama-7b")
    capacity = 8192
    for length in (16_384, 65_536, 262_144, 2**21):
        p = place(length, capacity, cost, offload=True)
        j = p.offload_ratio * (cost.layers - 2)
        assert abs(j - round(j)) < 1e-9
        assert len(OffloadPlan(p.offload_ratio, cost.layers).layers) == round(j)


def test_size_classes() -> None:
    for n in (1, 511, 512, 513, 4095, 4096, 10**6, 3 * 2**30):
        c = size_class(n)
        assert n <= c <= max(512, n * 1.125 + 1)


def test_offloaded_originals_are_freed_after_the_forward() -> None:
    """The point of offloading: once packed, nothing of ours keeps the original tensors alive."""
    import gc
    import weakref

    model = make_model()
    tokens, labels = batch()
    refs: list[tuple[weakref.ref[torch.Tensor], int]] = []
    with offloader(model, 1.0) as off:
        copy_out = off._copy_out

        def spy(i: int, t: torch.Tensor):  # type: ignore[no-untyped-def]
            refs.append((weakref.ref(t), t.numel() * t.element_size()))
            return copy_out(i, t)

        off._copy_out = spy  # type: ignore[method-assign]
        loss = model(tokens, labels, layer_context=off.layer_context)
        gc.collect()
        alive = sum(n for r, n in refs if r() is not None)
        total = sum(n for _, n in refs)
        assert total > 0 and alive <= 0.05 * total, f"{alive} of {total} offloaded bytes still alive"
        loss.backward()
