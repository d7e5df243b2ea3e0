"""The model is built on ``meta`` and initialised where it trains, with today's values (issue 19, item 10).

* bit for bit the weights of the original init (whole fp64 draws on the CPU, a float32 model moved
  to the dtype), in float64, float32 and bfloat16, with the default chunk and a chunk small
  enough to cut every matrix (the CPU tests' exactness rests on these values);
* for a non-CPU device (``meta`` here) no host tensor bigger than one chunk is made: no fp64 copy
  of the model, no float32 model on the host.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hdp.plan import get_model
from hdp.runtime.model import decoder
from hdp.runtime.model.decoder import Decoder, build_model

pytestmark = pytest.mark.timeout(120)


def original_build(cfg, dtype: torch.dtype, seed: int) -> Decoder:
    """The init as it was before issue 19 (the reference these tests hold the new one to)."""
    model = Decoder(cfg)
    gen = torch.Generator().manual_seed(seed)
    out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
                continue
            scale = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
    return model.to(dtype=dtype)


@pytest.mark.parametrize("chunk", [None, 48])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_meta_built_model_has_the_original_weights_bit_for_bit(dtype, chunk, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(decoder, "INIT_CHUNK", chunk)  # 48: every matrix in several pieces, odd tails
    cfg = get_model("tiny")
    new = build_model(cfg, dtype=dtype, device=torch.device("cpu"), seed=3)
    old = original_build(cfg, dtype, seed=3)
    assert [n for n, _ in new.named_parameters()] == [n for n, _ in old.named_parameters()]
    for (name, a), (_, b) in zip(new.named_parameters(), old.named_parameters()):
        assert a.dtype == b.dtype == dtype and a.device.type == "cpu", name
        assert torch.equal(a, b), name


def test_chunks_cover_the_tensor_with_tails_of_more_than_16():
    for n in (1, 15, 16, 17, 48, 64, 65, 100, 4096 + 7):
        pieces = decoder._chunks(n, 16)
        assert pieces[0][0] == 0 and pieces[-1][1] == n
        assert all(a == pb for (a, _), (_, pb) in zip(pieces[1:], pieces))
        assert len(pieces) == 1 or pieces[-1][1] - pieces[-1][0] > 16


class HostTensors(TorchDispatchMode):
    """The biggest CPU tensor any op makes (numel), and that of float64."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = self.largest_fp64 = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self.largest = max(self.largest, t.numel())
                if t.dtype == torch.float64:
                    self.largest_fp64 = max(self.largest_fp64, t.numel())
        return out


def test_init_for_a_non_cpu_device_holds_one_chunk_on_the_host(monkeypatch):
    monkeypatch.setattr(decoder, "INIT_CHUNK", 256)
    cfg = get_model("tiny")
    biggest = max(p.numel() for p in Decoder(cfg).parameters())
    assert biggest >= 8 * 256
    with HostTensors() as spy:
        model = build_model(cfg, dtype=torch.bfloat16, device=torch.device("meta"), seed=0)
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in model.parameters())
    assert 0 < spy.largest_fp64 <= 256 + 16 and spy.largest <= 256 + 16
