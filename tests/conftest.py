"""Shared test set-up: a free port, hand-built plans, deterministic attention inputs, and independent
references (dense masked attention; plain attention for whole packed sequences).

Plans are built directly (not by the planner) so each case pins down exactly what it exercises:
ring sizes, rank orders, pieces of unequal or zero length, several rings in one micro-batch, and
whole documents beside ring pieces.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from hdp.plan.types import MicroBatch, Plan, RankPlan, Ring, Segment, Sequence
from hdp.plan.zigzag import member_segments
from hdp.runtime.launch.spawn import free_port  # noqa: F401 - re-exported for the multi-process tests

HQ, HKV, DIM = 4, 2, 8  # GQA: two query heads per kv head


def build_plan(num_ranks: int, lengths: list[int], rounds: list[list[tuple]]) -> Plan:
    """``rounds[r]`` lists what runs in round r: ``("doc", seq, rank)`` or ``("ring", seq, (ranks...))``.

    Every rank with something in a round gets one micro-batch for it: its whole docs first, then its
    ring pieces in ring-id order (ring ids are numbered in order of appearance).
    """
    rings: list[Ring] = []
    per_rank: list[list[MicroBatch]] = [[] for _ in range(num_ranks)]
    for entries in rounds:
        segs: dict[int, list[Segment]] = {}
        mb_rings: dict[int, list[int]] = {}
        for kind, seq, where in entries:
            if kind == "doc":
                segs.setdefault(where, []).append(Segment(seq, 0, lengths[seq]))
                mb_rings.setdefault(where, [])
        for kind, seq, where in entries:
            if kind == "ring":
                ring = Ring(len(rings), seq, tuple(where))
                rings.append(ring)
                for pos, rank in enumerate(where):
                    segs.setdefault(rank, []).extend(member_segments(seq, lengths[seq], ring.size, pos))
                    mb_rings.setdefault(rank, []).append(ring.id)
        for rank in sorted(mb_rings):
            per_rank[rank].append(MicroBatch(tuple(segs.get(rank, ())), tuple(mb_rings[rank]), 0.0, 1 << 20))
    return Plan(
        strategy="test", num_ranks=num_ranks, capacity_tokens=1 << 20,
        sequences=tuple(Sequence(i, n) for i, n in enumerate(lengths)), rings=tuple(rings),
        ranks=tuple(RankPlan(r, tuple(m)) for r, m in enumerate(per_rank)),
    )


def seq_tensors(seq: int, length: int, dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    """Deterministic q [L,HQ,D], k, v [L,HKV,D] and dout [L,HQ,D] for one sequence, equal on every rank."""
    g = torch.Generator().manual_seed(1000 + seq)
    q = torch.randn(length, HQ, DIM, generator=g, dtype=torch.float64)
    k = torch.randn(length, HKV, DIM, generator=g, dtype=torch.float64)
    v = torch.randn(length, HKV, DIM, generator=g, dtype=torch.float64)
    dout = torch.randn(length, HQ, DIM, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (q, k, v, dout))


def token_index(layout: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(seq_ids, positions)`` of every buffer row of an AttentionLayout, int64 [T] each."""
    seq_ids = torch.empty(layout.num_tokens, dtype=torch.int64)
    positions = torch.empty(layout.num_tokens, dtype=torch.int64)
    for s in layout.spans:
        seq_ids[s.start:s.end] = s.seq
        positions[s.start:s.end] = torch.arange(s.pos_start, s.pos_start + s.num_tokens)
    return seq_ids, positions


def dense_reference(q, k, v, seq_ids, positions):
    """Attention with an explicit [T, T] mask: same sequence and key position <= query position.

    Independent of hdp's kernels (no blocks, no merges, no per-document loop); differentiable.
    Returns (out [T, Hq, D], lse [Hq, T]).
    """
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, k) * q.shape[-1] ** -0.5
    allowed = (seq_ids[:, None] == seq_ids[None, :]) & (positions[:, None] >= positions[None, :])
    s = s.masked_fill(~allowed[None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), v), lse


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Any) -> torch.Tensor:
    """The model's attention for single-process references: causal within each whole sequence of
    ``layout`` (anything with ``spans`` and no ``rings``), one SDPA call with an explicit T x T mask."""
    if layout.rings:
        raise ValueError("plain_attention handles whole sequences only; this micro-batch has ring pieces")
    t, hq, d = q.shape
    seq = torch.empty(t, dtype=torch.int64, device=q.device)
    pos = torch.empty(t, dtype=torch.int64, device=q.device)
    for s in layout.spans:
        seq[s.start:s.end] = s.seq
        pos[s.start:s.end] = torch.arange(s.pos_start, s.pos_start + s.num_tokens, device=q.device)
    mask = (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])   # [T, T], query x key
    rep = hq // k.shape[1]
    kk = k.repeat_interleave(rep, dim=1)                                       # [T, Hq, D]
    vv = v.repeat_interleave(rep, dim=1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), kk.transpose(0, 1), vv.transpose(0, 1), attn_mask=mask)
    return out.transpose(0, 1)                                                 # [T, Hq, D]


def reference_adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """torch's own AdamW with hdp's recipe (β = 0.9, 0.95, decay on matrices only): the references'
    optimizer, independent of hdp's sharded one."""
    params = list(model.parameters())
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=False)


def reference_step(model: torch.nn.Module, opt: torch.optim.Optimizer, docs: list[torch.Tensor],
                   max_grad_norm: float) -> dict[str, Any]:
    """One textbook training step in one process: every document alone (``plain_attention``), the
    token-mean cross-entropy over all documents, global-norm clip, ``opt.step()``. Returns the loss,
    the grad norm before clipping, the clipped gradients and the parameters after the update."""
    from hdp.runtime.attention.layout import Span

    opt.zero_grad(set_to_none=True)
    total, count = torch.zeros((), dtype=torch.float64), 0
    for i, ids in enumerate(docs):
        n = len(ids)
        layout = SimpleNamespace(spans=(Span(i, 0, n, 0),), rings=())
        logits = model(ids, torch.arange(n), layout)
        total = total + F.cross_entropy(logits[:-1], ids[1:], reduction="sum")
        count += n - 1
    loss = total / count
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    opt.step()
    return {"loss": float(loss.detach()), "grad_norm": float(norm), "grads": grads,
            "params": {name: p.detach().clone() for name, p in model.named_parameters()}}


def read_jsonl(path) -> list[dict]:
    """Every line of a JSONL file (metrics, --dump-batches) as a dict."""
    with open(path) as f:
        return [json.loads(line) for line in f]
