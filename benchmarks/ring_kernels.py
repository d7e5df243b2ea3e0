"""Kernel-side cost of each ring algorithm on one device: a member's block computations as each
variant runs them, without the communication (issue 12: "one GPU emulating a member's blocks").

Member 0 of a zig-zag ring of k holds pieces 0 and 2k-1; the block of the member at position j
holds pieces j and 2k-1-j. Every algorithm computes the same visible pairs (``ring_blocks``), so
what differs on the device is how:

* ``flat``: k blocks with every KV head, forward and backward;
* ``two-level`` (m nodes x g): the same k blocks, plus the round's extra buffer: each round's outer
  block is copied once into the buffer that travels to the next node, and its dK/dV added once
  more on the way back (the runtime's bookkeeping, ``ring_two_level``);
* ``bidirectional``: 2k half-head blocks (two lanes of half the KV heads and their query groups),
  i.e. twice the kernel launches at half the width, and the lanes' query and output slices.

The ratio to flat is what a variant costs in kernels alone; the simulator and ``ring_algos.py``
(CPU, gloo) cover the transfers. Interleaved repeats (flat, two-level, bidirectional, flat, ...),
median per variant after one warm-up.

    python benchmarks/ring_kernels.py [--member-tokens 8192] [--ring 8] [--node 4] [--repeat 5] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from hdp.plan.zigzag import zigzag_piece
from hdp.runtime.attention.pair_kernels import choose_kernel
from hdp.runtime.attention.ring.bidirectional import head_lanes
from hdp.runtime.attention.ring.blocks import Pieces, backward_block, forward_block

VARIANTS = ("flat", "two-level", "bidirectional")


def block_pieces(length: int, k: int, position: int) -> Pieces:
    """The pieces of the member at ``position`` as rows of its own block."""
    out, row = [], 0
    for j in (position, 2 * k - 1 - position):
        a, b = zigzag_piece(length, k, j)
        out.append((j, row, row + b - a))
        row += b - a
    return tuple(out)


class Member:
    """Member 0's queries, every block it will hold, and what a step needs, on one device."""

    def __init__(self, tokens: int, k: int, heads: int, kv_heads: int, head_dim: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.k, self.length = k, tokens * k
        self.q_pieces = block_pieces(self.length, k, 0)
        n = self.q_pieces[-1][2]
        gen = torch.Generator(device="cpu").manual_seed(0)

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

        self.q, self.dout = rand(n, heads, head_dim), rand(n, heads, head_dim)
        self.order = [(-s) % k for s in range(k)]  # the flat ring's arrival order at member 0
        self.blocks = {j: rand(2, block_pieces(self.length, k, j)[-1][2], kv_heads, head_dim) for j in range(k)}
        self.k_pieces = {j: block_pieces(self.length, k, j) for j in range(k)}
        self.scale = 1.0 / math.sqrt(head_dim)
        self.kernel = choose_kernel(self.q)
        # Received blocks arrive contiguous, so each lane's blocks are made so once, outside the timing.
        self.lane_blocks = {(None, None): self.blocks}
        for _, kh in head_lanes(heads, kv_heads):
            self.lane_blocks[(kh.start, kh.stop)] = {j: kv[:, :, kh].contiguous() for j, kv in self.blocks.items()}

    def lane(self, q: torch.Tensor, dout: torch.Tensor, kv_heads: slice, outer_every: int = 0) -> None:
        """Forward over every block, then backward; with ``outer_every`` g, the two-level ring's
        extra copy of each round's outer block and the extra add of its dK/dV."""
        acc = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype
        n, h = q.shape[0], q.shape[1]
        out = torch.empty(n, h, q.shape[2], dtype=acc, device=q.device)
        lse = torch.empty(h, n, dtype=acc, device=q.device)
        seen: set[int] = set()
        kvs = self.lane_blocks[(kv_heads.start, kv_heads.stop)]
        for t, j in enumerate(self.order):
            kv = kvs[j]
            if outer_every and t % outer_every == 0:
                kv = kv.clone()  # the round's outer block, copied into the buffer that travels on
            forward_block(q, self.q_pieces, kv, self.k_pieces[j], out, lse, seen, self.scale, self.kernel)
        dq, saved = torch.zeros_like(out), out.to(q.dtype)
        for t, j in enumerate(self.order):
            dkv = torch.zeros(kvs[j].shape, dtype=acc, device=q.device)
            backward_block(dout, q, self.q_pieces, kvs[j], self.k_pieces[j], saved, lse, dq, dkv,
                           self.scale, self.kernel)
            if outer_every and t % outer_every == 0:
                dkv = dkv + torch.zeros_like(dkv)  # its dK/dV travel one hop more, added once more

    def run(self, variant: str, node: int) -> None:
        heads, kv_heads = self.q.shape[1], next(iter(self.blocks.values())).shape[2]
        if variant == "flat":
            self.lane(self.q, self.dout, slice(None))
        elif variant == "two-level":
            self.lane(self.q, self.dout, slice(None), outer_every=node)
        else:
            for qh, kh in head_lanes(heads, kv_heads):
                self.lane(self.q[:, qh].contiguous(), self.dout[:, qh].contiguous(), kh)


def timed(member: Member, variant: str, node: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    member.run(variant, node)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    ap.add_argument("--member-tokens", type=int, default=8192 if cuda else 512, help="tokens one member holds")
    ap.add_argument("--ring", type=int, default=8, help="ring size k")
    ap.add_argument("--node", type=int, default=4, help="members per node g of the two-level ring (k = m g)")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128 if cuda else 32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    if args.ring % args.node or args.ring // args.node < 2 or args.kv_heads < 2 or args.heads % args.kv_heads:
        ap.error("--ring must be m x --node with m >= 2; --kv-heads >= 2 dividing --heads")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    member = Member(args.member_tokens, args.ring, args.heads, args.kv_heads, args.head_dim, device, dtype)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for v in VARIANTS:
        timed(member, v, args.node, device)  # warm-up
    for _ in range(args.repeat):
        for v in VARIANTS:
            times[v].append(timed(member, v, args.node, device))
    med = {v: statistics.median(ts) for v, ts in times.items()}
    result = {
        "benchmark": "ring_kernels", "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "kernel": member.kernel, "member_tokens": args.member_tokens,
        "ring": args.ring, "node": args.node, "heads": args.heads, "kv_heads": args.kv_heads,
        "head_dim": args.head_dim, "repeat": args.repeat,
        "median_s": med, "best_s": {v: min(ts) for v, ts in times.items()},
        "vs_flat": {v: med[v] / med["flat"] for v in VARIANTS},
    }
    for v in VARIANTS:
        print(f"{v:<14} {med[v] * 1e3:9.2f} ms  ({result['vs_flat'][v]:.3f}x flat)")
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
