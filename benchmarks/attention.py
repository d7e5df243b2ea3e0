"""Attention kernels of the runtime, against SDPA, on one device (GPU when present, else CPU).

1. Packed document-masked attention (``hdp.runtime.attention.doc_attention``: flash-attn varlen or FlexAttention
   on GPU, fused SDPA per document on CPU) vs batched causal SDPA over equal-length documents, on the
   same tokens: forward+backward time, TFLOP/s, ratio.
2. Ring per-block efficiency: one device runs, in sequence, every (query piece, key piece) block one
   ring member computes for a zig-zag split over k ranks (``pair_forward``/``pair_backward``, the
   ring's kernels), and compares its FLOP rate with causal SDPA over the whole sequence.

    python benchmarks/attention.py            # GPU: 64K tokens, 32 heads x 128; CPU: a reduced form
    python benchmarks/attention.py --json-out attention.json

Prints one JSON object and a table. Every figure is a ratio to a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Callable

import torch
import torch.nn.functional as F

from hdp.runtime.attention.doc_attention import PackedDocs, doc_attention
from hdp.runtime.attention.pair_kernels import pair_backward, pair_forward


def timed(fn: Callable[[], None], device: torch.device, repeat: int) -> float:
    """Best wall time of ``fn`` over ``repeat`` runs after one warm-up; synchronises only here."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def qkv(tokens: int, heads: int, dim: int, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.randn(tokens, heads, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]


def packed_vs_sdpa(tokens: int, doc: int, heads: int, dim: int, device, dtype, repeat: int) -> dict:
    q, k, v = qkv(tokens, heads, dim, device, dtype)
    docs = PackedDocs(range(0, tokens + 1, doc))  # built once, as the runtime does per micro-batch

    def packed() -> None:
        out, _ = doc_attention(q, k, v, docs)
        out.sum().backward()

    def sdpa() -> None:  # [T, H, D] -> [T/doc, H, doc, D]: one batched causal call
        shape = lambda x: x.view(tokens // doc, doc, heads, dim).transpose(1, 2)  # noqa: E731
        F.scaled_dot_product_attention(shape(q), shape(k), shape(v), is_causal=True).sum().backward()

    flops = 3.5 * 2 * heads * dim * doc * tokens  # causal fwd 2*h*d^2 per document; fwd+bwd 3.5x
    t_packed, t_sdpa = timed(packed, device, repeat), timed(sdpa, device, repeat)
    return {"doc": doc, "tokens": tokens, "packed_s": t_packed, "sdpa_s": t_sdpa,
            "packed_tflops": flops / t_packed / 1e12, "sdpa_tflops": flops / t_sdpa / 1e12,
            "packed_vs_sdpa": t_sdpa / t_packed}


def ring_block_efficiency(length: int, ring: int, heads: int, dim: int, device, dtype, repeat: int) -> dict:
    pieces = [(j * length // (2 * ring), (j + 1) * length // (2 * ring)) for j in range(2 * ring)]
    q, k, v = qkv(length, heads, dim, device, dtype)
    scale = dim ** -0.5
    mine = (0, 2 * ring - 1)  # member 0: the first and the last piece

    def member() -> None:
        with torch.no_grad():
            for p in mine:
                qs = q[pieces[p][0]:pieces[p][1]]
                for r in range(p + 1):  # r < p fully visible, r == p causal, r > p never computed
                    ks, vs = k[pieces[r][0]:pieces[r][1]], v[pieces[r][0]:pieces[r][1]]
                    out, lse = pair_forward(qs, ks, vs, r == p, scale)
                    pair_backward(torch.ones_like(out), qs, ks, vs, out, lse, r == p, scale)

    def whole() -> None:
        x = lambda t: t.transpose(0, 1).unsqueeze(0)  # noqa: E731
        F.scaled_dot_product_attention(x(q), x(k), x(v), is_causal=True).sum().backward()

    flops = 3.5 * 2 * heads * dim * length * length
    t_member, t_whole = timed(member, device, repeat), timed(whole, device, repeat)
    member_tflops = flops / ring / t_member / 1e12  # zig-zag: each member does 1/k of the work
    whole_tflops = flops / t_whole / 1e12
    return {"length": length, "ring": ring, "member_s": t_member, "whole_s": t_whole,
            "member_tflops": member_tflops, "whole_tflops": whole_tflops,
            "block_efficiency": member_tflops / whole_tflops}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    heads, dim = (32, 128) if gpu else (8, 64)
    tokens = 65536 if gpu else 4096
    docs = [512, 2048, 8192, 65536] if gpu else [256, 1024, 4096]
    rings = [(65536, 2), (65536, 4), (131072, 8)] if gpu else [(4096, 2), (4096, 4)]
    result = {
        "benchmark": "attention", "device": torch.cuda.get_device_name() if gpu else platform.processor() or "cpu",
        "dtype": str(dtype), "torch": torch.__version__, "heads": heads, "head_dim": dim,
        "packed": [packed_vs_sdpa(tokens, d, heads, dim, device, dtype, args.repeat) for d in docs],
        "ring": [ring_block_efficiency(n, k, heads, dim, device, dtype, args.repeat) for n, k in rings],
    }
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
    print(f"\n{'doc':>7} {'packed TF/s':>12} {'SDPA TF/s':>10} {'packed/SDPA speed':>18}")
    for r in result["packed"]:
        print(f"{r['doc']:>7} {r['packed_tflops']:>12.2f} {r['sdpa_tflops']:>10.2f} {r['packed_vs_sdpa']:>17.2f}x")
    print(f"\n{'length':>7} {'ring':>5} {'member TF/s':>12} {'whole TF/s':>11} {'block efficiency':>17}")
    for r in result["ring"]:
        print(f"{r['length']:>7} {r['ring']:>5} {r['member_tflops']:>12.2f} {r['whole_tflops']:>11.2f} {r['block_efficiency']:>16.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
