"""Plain dense attention over whole packed sequences: the independent reference the tests and the
overhead benchmark compare HDP against (no rings, no communication, an explicit T x T mask)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Any, *,
                    timeout_s: float | None = None) -> torch.Tensor:
    """Causal attention within each whole sequence of ``layout`` (an AttentionLayout without rings)."""
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
