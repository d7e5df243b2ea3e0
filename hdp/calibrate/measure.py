"""Micro-benchmarks behind a device profile: what the cost model needs, measured the way the
runtime runs it.

FLOP conventions are the cost model's (``hdp.plan.cost.cost_model``), so a measured rate plugs straight into
it: a layer's GEMMs fwd+bwd are 3 x 2mkn; causal attention fwd+bwd is 3.5 x 2·h·s² per document
(flash attention's backward recomputes the scores).
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from hdp.runtime.attention.doc_attention import doc_attention


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, min_time_s: float, min_runs: int = 2) -> float:
    """Mean seconds per call after one warm-up call, over at least ``min_runs`` calls and ``min_time_s``."""
    fn()
    synchronize(device)
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        if runs >= min_runs:
            synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time_s:
                return elapsed / runs


def layer_shapes(hidden: int, kv_dim: int, ffn: int) -> list[tuple[int, int]]:
    """(in, out) of one LLaMA layer's matmuls: fused QKV, output, fused gate+up, down."""
    return [(hidden, hidden + 2 * kv_dim), (hidden, hidden), (hidden, 2 * ffn), (ffn, hidden)]


def gemm_tflops(m: int, shapes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype,
                min_time_s: float) -> float:
    """TFLOP/s of a layer's linear maps, forward and backward, on ``m`` token rows."""
    flops, seconds = 0.0, 0.0
    for k, n in shapes:
        x = torch.randn(m, k, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(n, k, device=device, dtype=dtype, requires_grad=True)

        def step() -> None:
            (x @ w.t()).sum().backward()

        seconds += timed(step, device, min_time_s)
        flops += 3 * 2 * m * k * n
    return flops / seconds / 1e12


def layer_overhead_s(shapes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype, min_time_s: float) -> float:
    """Fixed cost of one layer on a tiny micro-batch (16 tokens): launches and autograd bookkeeping."""
    tiny = [(torch.randn(16, k, device=device, dtype=dtype, requires_grad=True), torch.randn(n, k, device=device, dtype=dtype))
            for k, n in shapes]

    def step() -> None:
        sum((a @ w.t()).sum() for a, w in tiny).backward()

    return timed(step, device, min_time_s)


def causal_attn_tflops(s: int, heads: int, head_dim: int, device: torch.device, dtype: torch.dtype,
                       min_time_s: float) -> float:
    """One causal sequence of ``s`` tokens, SDPA forward + backward."""
    q, k, v = (torch.randn(1, heads, s, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))

    def step() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    return 3.5 * 2 * heads * head_dim * s * s / timed(step, device, min_time_s) / 1e12


def doc_attn_tflops(tokens: int, doc: int, heads: int, kv_heads: int, head_dim: int, device: torch.device,
                    dtype: torch.dtype, min_time_s: float) -> float:
    """Documents of ``doc`` tokens packed into ``tokens``, through the runtime's document-masked kernel."""
    q = torch.randn(tokens, heads, head_dim, device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(tokens, kv_heads, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    cu = list(range(0, tokens + 1, doc))

    def step() -> None:
        doc_attention(q, k, v, cu)[0].sum().backward()

    return 3.5 * 2 * heads * head_dim * doc * tokens / timed(step, device, min_time_s) / 1e12


def copy_gbps(device: torch.device, num_bytes: int, min_time_s: float) -> tuple[float, float]:
    """(device->host, host->device) GB/s with pinned host memory; on CPU, memcpy for both."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    if device.type == "cpu":
        dst = torch.empty_like(src)
        gbps = num_bytes / timed(lambda: dst.copy_(src), device, min_time_s) / 1e9
        return gbps, gbps
    host = torch.empty(num_bytes, dtype=torch.uint8, pin_memory=True)
    d2h = num_bytes / timed(lambda: host.copy_(src, non_blocking=True), device, min_time_s) / 1e9
    h2d = num_bytes / timed(lambda: src.copy_(host, non_blocking=True), device, min_time_s) / 1e9
    return d2h, h2d


def p2p_gbps(a: torch.device, b: torch.device, num_bytes: int, min_time_s: float) -> float:
    """One-direction copy bandwidth from device ``a`` to device ``b`` (NVLink or PCIe)."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device=a)
    dst = torch.empty(num_bytes, dtype=torch.uint8, device=b)

    def step() -> None:
        dst.copy_(src, non_blocking=True)
        synchronize(b)

    return num_bytes / timed(step, a, min_time_s) / 1e9
