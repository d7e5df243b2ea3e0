"""Device memory settings of issue 19, item 12, on CUDA: expandable segments in a fresh process (as
``hdp train`` sets them), and the chunked LM-head loss against full logits. Skipped cleanly without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from hdp.runtime.launch.accelerator import ALLOC_CONF_VARS
from hdp.runtime.train.loss import chunked_cross_entropy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = ("from hdp.runtime.launch.accelerator import allocator_defaults; allocator_defaults(); import torch; "
         "x = torch.empty(1 << 20, device=torch.device('cuda', 0)); "
         "print(all(s.get('is_expandable', False) for s in torch.cuda.memory_snapshot()))")


def probe(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ALLOC_CONF_VARS}
    env.update(PYTHONPATH=ROOT, **extra)
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_expandable_segments_are_on_unless_the_user_says_otherwise():
    assert probe() == "True"
    assert probe(PYTORCH_ALLOC_CONF="expandable_segments:False") == "False"


def test_chunked_loss_matches_full_logits_in_less_memory():
    dev = torch.device("cuda", torch.cuda.current_device())
    T, h, V = 8192, 1024, 32000
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(T, h, device=dev, generator=g, dtype=torch.bfloat16).requires_grad_()
    weight = (torch.randn(V, h, device=dev, generator=g, dtype=torch.bfloat16) * 0.02).requires_grad_()
    labels = torch.randint(0, V, (T,), device=dev, generator=g)
    labels[::5] = -100
    results = {}
    for name in ("full", "chunked"):
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        if name == "full":
            loss = F.cross_entropy(F.linear(hidden, weight).float(), labels, ignore_index=-100, reduction="sum")
        else:
            loss = chunked_cross_entropy(hidden, weight, labels, chunk_rows=1024)
        loss.backward()
        torch.cuda.synchronize()
        results[name] = (loss.detach(), hidden.grad.float(), weight.grad.float(), torch.cuda.max_memory_allocated() - base)
    full, chunked = results["full"], results["chunked"]
    torch.testing.assert_close(chunked[0], full[0], rtol=1e-4, atol=1e-2)
    for a, b in zip(chunked[1:3], full[1:3]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * float(b.abs().max()))
    logits_fp32 = T * V * 4
    assert chunked[3] < full[3] - logits_fp32  # the full path holds at least one more [T, V] float32 tensor


def test_step_time_includes_the_queued_device_work():
    """``step_elapsed`` waits for the device: it is at least the kernels' own time by CUDA events."""
    import time

    from hdp.runtime.launch.accelerator import step_elapsed

    dev = torch.device("cuda", torch.cuda.current_device())
    a = torch.randn(4096, 4096, device=dev)
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start = time.perf_counter()
    begin.record()
    for _ in range(50):
        a = (a @ a).clamp_(-1, 1)  # ~7 TFLOP queued; the host returns long before it is done
    end.record()
    elapsed = step_elapsed(start, dev)
    assert end.query()  # finished when step_elapsed returned
    assert elapsed >= 0.95 * begin.elapsed_time(end) / 1e3
