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
