"""Selective activation offloading on CPU: the copy path runs (host buffers separate from the 'device')
and losses and gradients must be bit-identical to training without offloading."""

from __future__ import annotations

import pytest
import torch

from hdp.plan import build_cost_model
from hdp.plan.schedule.sharding import offloaded_layers, place
from hdp.runtime.offload.host_pool import HostBufferPool, size_class
from hdp.runtime.offload.activations import ActivationOffloader
from tests.runtime.tiny_llama import TinyLlama, forward_backward

NUM_LAYERS = 6
CPU = torch.device("cpu")


def make_model() -> TinyLlama:
    torch.manual_seed(0)
    return TinyLlama(num_layers=NUM_LAYERS).double()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 64, (2, 48), generator=g)
    return tokens, torch.roll(tokens, -1, dims=1)


def step(model: TinyLlama, off: ActivationOffloader | None, layers: int = 0,
         seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return forward_backward(model, *batch(seed), off, layers)


def offloader(model: TinyLlama, **kw: object) -> ActivationOffloader:
    return ActivationOffloader(CPU, NUM_LAYERS, model.parameters(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("layers", [0, 1, 2, 3, 4])
def test_bit_identical_to_no_offload(layers: int) -> None:
    model = make_model()
    ref_loss, ref_grads = step(model, None)
    off = offloader(model)
    loss, grads = step(model, off, layers)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
    if layers:
        assert off.stats.offloaded_tensors > 0
        assert off.stats.prefetched_layers == layers and off.stats.late_fetches == 0
    assert off.offloaded_bytes == (off.stats.offloaded_bytes if layers else 0)


def test_weights_are_never_copied_and_shared_saves_are_copied_once() -> None:
    model = make_model()
    off = offloader(model)
    step(model, off, NUM_LAYERS - 2)
    assert off.stats.skipped_params > 0
    # Per layer: the attention-norm output is saved by q, k and v, the MLP-norm output by gate and up.
    assert off.stats.deduplicated >= 3 * (NUM_LAYERS - 2)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert off.stats.offloaded_bytes < 10 * weight_bytes  # sanity: activations only


def test_small_tensors_stay_resident_above_the_threshold() -> None:
    model = make_model()
    off = offloader(model, min_bytes=1 << 20)  # the CUDA default
    step(model, off, NUM_LAYERS - 2)
    assert off.stats.offloaded_tensors == 0 and off.stats.skipped_small > 0


def test_pool_reused_across_micro_batches_and_bytes_add_up() -> None:
    model = make_model()
    off = offloader(model)
    first, total = None, 0
    for s in range(4):
        step(model, off, 2, seed=s)
        total += off.stats.offloaded_bytes
        pool = off.pool
        if first is None:
            first = (pool.num_allocations, pool.reserved_bytes)
            assert first[0] > 0
        assert (pool.num_allocations, pool.reserved_bytes) == first
        assert pool.free_bytes == pool.reserved_bytes  # everything returned at the end of the micro-batch
    assert off.offloaded_bytes == total > 0


def test_unpack_after_micro_batch_end_raises() -> None:
    model = make_model()
    tokens, labels = batch()
    off = offloader(model)
    with off.micro_batch(NUM_LAYERS - 2) as ctx:
        loss = model(tokens, labels, layer_context=ctx)
    with pytest.raises(RuntimeError, match="after its micro-batch ended"):
        loss.backward()
    with pytest.raises(RuntimeError, match="has ended"):
        ctx(0)


def test_bad_layer_counts() -> None:
    off = ActivationOffloader(CPU, NUM_LAYERS)
    for bad in (-1, NUM_LAYERS - 1):
        with pytest.raises(ValueError, match="offload_layers"):
            with off.micro_batch(bad):
                pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_pinned_memory_unavailable_fails_before_the_step() -> None:
    pool = HostBufferPool(pin_memory=True)
    with pytest.raises(RuntimeError, match="pinned host memory"):
        pool.check_pinnable()


def test_planner_layer_counts_are_what_the_runtime_offloads() -> None:
    cost = build_cost_model("llama-7b")
    capacity = 8192
    for length in (16_384, 65_536, 262_144, 2**21):
        p = place(length, capacity, cost, offload=True)
        j = p.offload_ratio * (cost.layers - 2)
        assert abs(j - round(j)) < 1e-9
        assert len(offloaded_layers(round(j), cost.layers)) == round(j)


def test_layer_choice_leaves_room_for_the_prefetch() -> None:
    """The planner's rule, as the offloader relies on it: first and last layers resident, and the
    top offloaded layer below l - 2 unless all are offloaded (its prefetch starts after layer l - 1 is freed)."""
    assert offloaded_layers(0, 32) == ()
    assert offloaded_layers(30, 32) == tuple(range(1, 31))
    assert offloaded_layers(15, 32) == tuple(range(1, 31, 2))
    assert offloaded_layers(0, 2) == ()
    for num_layers in range(3, 40):
        for j in range(0, num_layers - 1):
            layers = offloaded_layers(j, num_layers)
            assert len(layers) == j and len(set(layers)) == j
            assert all(1 <= x <= num_layers - 2 for x in layers)
            if j < num_layers - 2:
                assert max(layers, default=0) < num_layers - 2


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
    off = offloader(model)
    copy_out = off._copy_out

    def spy(t: torch.Tensor):  # type: ignore[no-untyped-def]
        refs.append((weakref.ref(t), t.numel() * t.element_size()))
        return copy_out(t)

    off._copy_out = spy  # type: ignore[method-assign]
    with off.micro_batch(NUM_LAYERS - 2) as ctx:
        loss = model(tokens, labels, layer_context=ctx)
        gc.collect()
        alive = sum(n for r, n in refs if r() is not None)
        total = sum(n for _, n in refs)
        assert total > 0 and alive <= 0.05 * total, f"{alive} of {total} offloaded bytes still alive"
        loss.backward()
