"""The learning-rate schedule: warmup, then constant, cosine or linear decay to min_lr."""

from __future__ import annotations

import math

import pytest

from hdp.runtime.optim.lr_schedule import lr_at


def test_warmup_then_each_schedule():
    kw = dict(lr=1.0, steps=12, warmup_steps=2, min_lr=0.1)
    assert [lr_at(s, schedule="constant", **kw) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    cos = [lr_at(s, schedule="cosine", **kw) for s in range(12)]
    lin = [lr_at(s, schedule="linear", **kw) for s in range(12)]
    assert cos[:3] == [0.5, 1.0, 1.0] and lin[:3] == [0.5, 1.0, 1.0]
    # after warmup t = (s - 2) / 10
    for s in range(2, 12):
        t = (s - 2) / 10
        assert cos[s] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)), rel=1e-15)
        assert lin[s] == pytest.approx(1.0 - 0.9 * t, rel=1e-15)
    assert all(a > b for a, b in zip(cos[2:], cos[3:])) and all(a > b for a, b in zip(lin[2:], lin[3:]))
    assert min(cos) > 0.1 and min(lin) > 0.1  # the last step is still above min_lr


def test_no_warmup_starts_at_lr_and_bad_names_are_refused():
    assert lr_at(0, lr=3e-3, steps=20) == 3e-3
    assert lr_at(1000, lr=1.0, steps=20, schedule="linear", min_lr=0.25) == 0.25  # past the end: min_lr
    with pytest.raises(ValueError, match="--lr-schedule must be one of"):
        lr_at(0, lr=1.0, steps=2, schedule="step")  # type: ignore[arg-type]
