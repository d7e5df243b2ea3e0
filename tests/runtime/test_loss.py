"""The chunked LM-head cross-entropy equals F.cross_entropy and never holds [T, V] (issue 19, item 12)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from hdp.runtime.train.loss import chunked_cross_entropy

pytestmark = pytest.mark.timeout(60)
IGNORE = -100


def inputs(T: int = 37, h: int = 8, V: int = 50, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = torch.randn(V, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (T,), generator=g)
    labels[::7] = IGNORE
    return hidden, weight, labels


def reference(hidden, weight, labels, scale):
    logits = F.linear(hidden, weight)
    logits = logits.float() if logits.dtype == torch.bfloat16 else logits
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum") * scale


def loss_and_grads(fn, hidden, weight, labels, scale):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, labels, scale)
    loss.backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("chunk_rows", [1, 5, 36, 37, 1000])
@pytest.mark.parametrize("scale", [1.0, 1 / 123])
def test_float64_same_loss_and_gradients(chunk_rows, scale):
    hidden, weight, labels = inputs()
    want = loss_and_grads(reference, hidden, weight, labels, scale)
    got = loss_and_grads(lambda h, w, y, s: chunked_cross_entropy(h, w, y, ignore_index=IGNORE, scale=s,
                                                                  chunk_rows=chunk_rows), hidden, weight, labels, scale)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_unlabelled_tokens_add_nothing():
    hidden, weight, labels = inputs(T=6)
    labels[:] = IGNORE
    loss, gh, gw = loss_and_grads(lambda h, w, y, s: chunked_cross_entropy(h, w, y, ignore_index=IGNORE, chunk_rows=4),
                                  hidden, weight, labels, 1.0)
    assert loss.item() == 0 and not gh.any() and not gw.any()


def test_only_the_needed_gradient_is_computed():
    hidden, weight, labels = inputs()
    weight.requires_grad_(False)
    chunked_cross_entropy(hidden, weight, labels, ignore_index=IGNORE, chunk_rows=8).backward()
    ref = hidden.grad.clone()
    hidden.grad = None
    reference(hidden, weight, labels, 1.0).backward()
    torch.testing.assert_close(ref, hidden.grad, rtol=0, atol=1e-12)


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.most = max(self.most, t.numel())
        return out


def test_never_materialises_full_logits():
    T, h, V, rows = 64, 4, 300, 8
    hidden, weight, labels = inputs(T, h, V)
    with LargestTensor() as seen:
        chunked_cross_entropy(hidden, weight, labels, ignore_index=IGNORE, chunk_rows=rows).backward()
    assert seen.most <= max(rows * V, V * h) < T * V
    with LargestTensor() as plain:  # the check itself sees the full logits of the plain loss
        reference(hidden, weight, labels, 1.0).backward()
    assert plain.most >= T * V


def test_bfloat16_matches_the_plain_loss():
    hidden, weight, labels = inputs(T=64, h=16, V=96, dtype=torch.bfloat16)
    want = loss_and_grads(reference, hidden, weight, labels, 1 / 64)
    got = loss_and_grads(lambda h, w, y, s: chunked_cross_entropy(h, w, y, ignore_index=IGNORE, scale=s, chunk_rows=16),
                         hidden, weight, labels, 1 / 64)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1].float(), want[1].float(), rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(got[2].float(), want[2].float(), rtol=2e-2, atol=1e-4)


def test_bad_shapes_are_named():
    hidden, weight, labels = inputs()
    with pytest.raises(ValueError, match="hidden \\[T, h\\]"):
        chunked_cross_entropy(hidden, weight[:, :3], labels)


def test_the_train_step_takes_the_chunked_loss_for_large_logits(monkeypatch):
    """Same loss and gradients from train_step with the chunked loss as with full logits (float64)."""
    from hdp.plan import build_cost_model, get_model, make_plan
    from hdp.runtime.model.decoder import build_model
    from hdp.runtime.train import loss as loss_module
    from hdp.runtime.train.step import build_optimizer, forward_backward
    from tests.runtime.test_zero import random_batch

    cpu = torch.device("cpu")
    batch = random_batch([40, 17, 9, 1], seed=3)
    plan = make_plan(batch.lengths, 1, 128, build_cost_model("tiny"))
    calls = []
    real = loss_module.chunked_cross_entropy
    monkeypatch.setattr(loss_module, "chunked_cross_entropy", lambda *a, **k: (calls.append(1), real(*a, **k))[1])

    def run(chunked: bool):
        monkeypatch.setattr(loss_module, "MIN_CHUNKED_ELEMENTS", 1 if chunked else 1 << 62)
        monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * get_model("tiny").vocab_size)  # 7 tokens a chunk
        model = build_model(get_model("tiny"), dtype=torch.float64, device=cpu, seed=0)
        opt = build_optimizer(model, 1e-3)
        opt.zero_grad()
        share, _, _ = forward_backward(model, plan, batch, 0, cpu, timeout_s=30)
        return share, opt.grad_buffer.clone()  # every parameter's gradient, flat

    plain_loss, plain_grads = run(False)
    assert not calls
    chunked_loss, chunked_grads = run(True)
    assert calls
    torch.testing.assert_close(chunked_loss, plain_loss, rtol=0, atol=1e-12)
    assert plain_grads.abs().max() > 0
    torch.testing.assert_close(chunked_grads, plain_grads, rtol=0, atol=1e-12)
