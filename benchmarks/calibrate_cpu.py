"""Measure a CPU device profile for the cost model (hdp.device/1, ``DeviceProfile.to_dict`` format).

GEMM TFLOP/s at a few row counts for the layer shapes of ``--model``, causal attention fwd+bwd
TFLOP/s (torch SDPA) at a few lengths, memcpy bandwidth as the "offload" bandwidth, the fixed
per-layer cost of a tiny micro-batch, and the machine's memory. The simulator then predicts
``hdp train`` on local CPU ranks (benchmarks/sim_vs_runtime.py).

    python benchmarks/calibrate_cpu.py --model small --threads 1 --out hdp/plan/profiles/cpu-small-1t.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from hdp.plan.model_config import get_model


def bench(fn, min_time: float = 0.2, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - start
        if el >= min_time and n >= 3:
            return el / n


def gemm_tflops(m: int, shapes: list[tuple[int, int]], dtype) -> float:
    """Forward+backward of a layer's linear maps on m tokens, FLOPs 3 x 2*m*k*n each."""
    flops, total = 0.0, 0.0
    for k, n in shapes:
        x = torch.randn(m, k, dtype=dtype, requires_grad=True)
        w = torch.randn(n, k, dtype=dtype, requires_grad=True)

        def step():
            y = x @ w.t()
            y.sum().backward()

        total += bench(step)
        flops += 3 * 2 * m * k * n
    return flops / total / 1e12


def attn_tflops(s: int, heads: int, head_dim: int, dtype) -> float:
    q, k, v = (torch.randn(1, heads, s, head_dim, dtype=dtype, requires_grad=True) for _ in range(3))

    def step():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    t = bench(step)
    # Same FLOP count as the cost model: forward 2*h*s^2 (causal), fwd+bwd 3.5x.
    return 3.5 * 2 * heads * head_dim * s * s / t / 1e12


def memcpy_gbps() -> float:
    a = torch.empty(64 * 2**20, dtype=torch.uint8)
    b = torch.empty_like(a)
    t = bench(lambda: b.copy_(a))
    return a.numel() / t / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a local rank of hdp train uses this many)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    m = get_model(args.model)
    h, kv, ffn = m.hidden_size, m.kv_dim, m.ffn_size
    shapes = [(h, h + 2 * kv), (h, h), (h, 2 * ffn), (ffn, h)]
    gemm = {str(t): gemm_tflops(t, shapes, dtype) for t in (64, 256, 1024, 4096)}
    attn = {str(s): attn_tflops(s, m.num_heads, m.head_dim, dtype) for s in (128, 512, 2048, 8192)}
    # Fixed cost of one layer on a tiny micro-batch (16 tokens): launches and autograd bookkeeping.
    tiny = [(torch.randn(16, k, dtype=dtype, requires_grad=True), torch.randn(n, k, dtype=dtype)) for k, n in shapes]

    def tiny_layer():
        sum((a @ w.t()).sum() for a, w in tiny).backward()

    overhead = bench(tiny_layer)
    copy = memcpy_gbps()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    profile = {
        "format": "hdp.device/1",
        "name": f"cpu-{args.model}-{args.threads}t",
        "source": (f"benchmarks/calibrate_cpu.py on {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s), {args.dtype}"),
        "peak_tflops": max(gemm.values()),
        "gemm_tflops": gemm,
        "attn_tflops": attn,
        "d2h_GBps": copy,
        "h2d_GBps": copy,
        "mem_total_GiB": mem,
        "layer_overhead_s": overhead,
    }
    text = json.dumps(profile, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
