"""Ring attention across real processes (gloo, localhost): forward and backward against full attention.

Starting processes is the slow part on small machines, so one start per world size runs many cases
inside, and processes are forked (importing torch again in five fresh interpreters costs more than
all the cases). Children use one intra-op thread, which keeps fork safe after the parent used OpenMP.
"""

from __future__ import annotations

import os
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hdp.runtime.attention.pair_kernels as pair_kernels
from hdp.plan import build_cost_model, make_plan
from hdp.runtime.attention.dispatch import MicroBatchAttention, hdp_attention
from hdp.runtime.attention.layout import build_layout
from hdp.runtime.attention.ring.comm import RingTimeoutError
from tests.conftest import build_plan, dense_reference, free_port, seq_tensors, token_index

pytestmark = [pytest.mark.dist, pytest.mark.timeout(120)]

# World of 5. Round 0: a 2-ring on ranks (3, 1) and a 3-ring on (4, 0, 2) at once, on disjoint ranks,
# beside whole docs (ranks 0 and 3). Round 1: a 5-ring in a scrambled rank order plus a doc. Round 2:
# two 5-rings in one micro-batch (the static baseline's shape), one with an empty piece (length 9 <
# 2k = 10), and a 3-ring where member 1 (rank 1) holds no token at all. No length divides by 2k.
# Each case runs with the fused pair kernel, the matmul kernel, and in bfloat16 (merges in float32:
# the error stays at bf16 rounding of the inputs however many blocks are merged).
LENGTHS = [23, 41, 5, 1, 7, 53, 4, 13, 9, 2]
ROUNDS = [
    [("doc", 2, 3), ("doc", 3, 0), ("doc", 4, 0), ("ring", 0, (3, 1)), ("ring", 1, (4, 0, 2))],
    [("doc", 6, 1), ("ring", 5, (2, 4, 1, 0, 3))],
    [("ring", 7, (0, 1, 2, 3, 4)), ("ring", 8, (4, 3, 2, 1, 0)), ("ring", 9, (3, 1, 4))],
]


def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


# Plans from the planner itself, same 5 ranks: hdp (rings of 4, 3 and 2 beside whole sequences),
# static (every sequence on a 5-ring, up to four rings per micro-batch, members with no tokens) and
# pow2 (rings on aligned power-of-two groups).
PLANNER_LENGTHS = [37, 5, 9, 3, 60, 4, 16, 1, 23, 11]


def _references(lengths: list[int]) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per sequence: q, k, v, dout, and full-attention out, dq, dk, dv (float64)."""
    refs = {}
    for i, n in enumerate(lengths):
        q, k, v, dout = seq_tensors(i, n)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, _ = dense_reference(*leaves, torch.zeros(n), torch.arange(n))
        out.backward(dout)
        refs[i] = (q, k, v, dout, out.detach(), *(t.grad for t in leaves))
    return refs


def _check_plan(plan, rank: int, refs, label: str, dtype: torch.dtype, tol: float) -> None:
    for mb in range(len(plan.ranks[rank].micro_batches)):
        layout = build_layout(plan, rank, mb)
        seq_ids, positions = token_index(layout)

        def rows(j):  # buffer rows of reference tensor j, gathered by (seq, position)
            return torch.stack([refs[s][j][p] for s, p in zip(seq_ids.tolist(), positions.tolist())])

        # Three "layers" share one micro-batch's metadata: each must give the same exact result, and
        # the ring transfer buffers allocated by the first are reused by the others.
        batch = MicroBatchAttention(layout, timeout_s=30.0)
        allocations = []
        for layer in range(3):
            q, k, v = (rows(j).to(dtype).requires_grad_() for j in range(3))
            out = hdp_attention(q, k, v, batch)
            out.backward(rows(3).to(dtype))
            allocations.append([ring.allocations for ring in batch.rings])
            where = f"{label}: rank {rank} micro-batch {mb} {dtype} layer {layer}"
            for name, got, j in (("out", out, 4), ("dq", q.grad, 5), ("dk", k.grad, 6), ("dv", v.grad, 7)):
                assert got.dtype == dtype
                torch.testing.assert_close(got.double(), rows(j), rtol=tol, atol=tol,
                                           msg=lambda m: f"{where} {name}: {m}")
        assert allocations[0] == allocations[1] == allocations[2], f"{label}: buffers reallocated {allocations}"


def _check_rank(rank: int, world: int, port: int) -> None:
    _init(rank, world, port)
    plan = build_plan(world, LENGTHS, ROUNDS)
    refs = _references(LENGTHS)
    auto = pair_kernels.choose_kernel
    for kernel, dtype, tol in [("auto", torch.float64, 1e-10), ("matmul", torch.float64, 1e-10),
                               ("auto", torch.bfloat16, 3e-2)]:
        pair_kernels.choose_kernel = auto if kernel == "auto" else (lambda q: kernel)
        _check_plan(plan, rank, refs, f"hand-built plan, {kernel} kernel", dtype, tol)
    pair_kernels.choose_kernel = auto
    refs = _references(PLANNER_LENGTHS)
    for strategy in ("hdp", "static", "pow2"):
        plan = make_plan(PLANNER_LENGTHS, world, 16, build_cost_model("tiny"), strategy=strategy)
        _check_plan(plan, rank, refs, f"{strategy} plan", torch.float64, 1e-10)
    dist.destroy_process_group()


def _start(fn, args: tuple, nprocs: int) -> None:
    mp.start_processes(fn, args=args, nprocs=nprocs, join=True, start_method="fork")


def test_ring_attention_equals_full_attention_forward_and_backward():
    _start(_check_rank, (5, free_port()), 5)


def _missing_peer(rank: int, world: int, port: int, flag: str) -> None:
    _init(rank, world, port)
    plan = build_plan(world, [12], [[("ring", 0, (0, 1))]])
    try:
        if rank == 0:
            layout = build_layout(plan, 0, 0)
            q = torch.randn(layout.num_tokens, 4, 8)
            k = v = torch.randn(layout.num_tokens, 2, 8)
            start = time.monotonic()
            with pytest.raises(RingTimeoutError) as info:
                hdp_attention(q, k, v, MicroBatchAttention(layout, timeout_s=1.0))
            assert time.monotonic() - start < 20
            message = str(info.value)
            for part in ("ring 0", "micro-batch 0", "rank 1", "1 s"):
                assert part in message, message
        else:  # rank 1 never joins the ring: it only waits until rank 0 has seen the error
            deadline = time.monotonic() + 60
            while not os.path.exists(flag) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        if rank == 0:
            open(flag, "w").close()
    # Exit without tearing down the group: rank 0 still has unmatched transfers posted.
    os._exit(0)


def test_missing_peer_raises_a_timeout_naming_ring_and_peer():
    with tempfile.TemporaryDirectory() as tmp:
        _start(_missing_peer, (2, free_port(), os.path.join(tmp, "done")), 2)
