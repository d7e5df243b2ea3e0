"""hdp.plan.cost.flops against torch's own FLOP counter on the runtime's model.

The model runs with an attention that computes each query row against exactly the keys it may see
(its own document, causal), so the matmuls torch counts are the model's real work: linear layers,
output head and Σ over documents of their causal pairs, forward and backward.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hdp.plan.cost.flops import batch_flops
from hdp.plan.cost.model_config import ModelConfig, get_model
from hdp.runtime.attention.matmul_attention import expand_kv
from hdp.runtime.model.decoder import Decoder

pytestmark = pytest.mark.timeout(60)


def row_by_row_attention(docs: list[int]):
    def attention(q, k, v, layout):  # q [T, Hq, D], k/v [T, Hkv, D]
        k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
        rows, start = [], 0
        for s in docs:
            for i in range(start, start + s):
                qi = q[i:i + 1].transpose(0, 1)                          # [H, 1, D]
                ks, vs = k[start:i + 1].transpose(0, 1), v[start:i + 1].transpose(0, 1)  # [H, i+1-start, D]
                p = torch.softmax(qi @ ks.transpose(1, 2) * q.shape[-1] ** -0.5, dim=-1)
                rows.append((p @ vs).transpose(0, 1))                   # [1, H, D]
            start += s
        return torch.cat(rows)

    return attention


@pytest.mark.parametrize("cfg", [get_model("tiny"),
                                 ModelConfig("mha", hidden_size=48, num_layers=3, num_heads=6, num_kv_heads=6,
                                             ffn_size=80, vocab_size=300)])
def test_flop_formula_equals_torch_flop_counter_on_the_model(cfg):
    docs = [1, 5, 12, 3]
    torch.manual_seed(0)
    model = Decoder(cfg, attention=row_by_row_attention(docs)).double()
    tokens = torch.randint(0, cfg.vocab_size, (sum(docs),))
    positions = torch.cat([torch.arange(s) for s in docs])
    counter = FlopCounterMode(display=False)
    with counter:
        model(tokens, positions, None).sum().backward()
    assert counter.get_total_flops() == batch_flops(cfg, docs).total
