"""Honest FLOPs (causal attention within each document) vs torchtitan's formula (full attention over
the configured sequence length), on synthetic global batches. No torch; prints JSON and a table.

    python benchmarks/mfu_formulas.py
"""

from __future__ import annotations

import json
import sys

from hdp.data.synthetic import sample_lengths
from hdp.plan.cost.flops import batch_flops, torchtitan_flops
from hdp.plan.cost.model_config import get_model

CASES = (  # (model, distribution, tokens, max_len)
    ("llama-7b", "byted", 32 * 2**20, 2**21),
    ("llama-7b", "github", 32 * 2**20, 2**21),
    ("llama-7b", "byted", 32 * 2**20, 2**15),
    ("llama-7b", "uniform", 32 * 2**20, 2**15),
)


def main() -> int:
    rows = []
    for model_name, dist, tokens, max_len in CASES:
        model = get_model(model_name)
        lengths = sample_lengths(dist, tokens, max_len, 0)
        ours = batch_flops(model, lengths)
        theirs = torchtitan_flops(model, sum(lengths), seq_len=max_len)
        rows.append({"model": model_name, "dist": dist, "tokens": sum(lengths), "max_len": max_len,
                     "sequences": len(lengths), "hdp_pflops": ours.total / 1e15,
                     "hdp_attention_share": ours.attention / ours.total,
                     "torchtitan_pflops": theirs / 1e15, "torchtitan_over_hdp": theirs / ours.total})
    json.dump(rows, sys.stdout, indent=1)
    print()
    print(f"{'batch':28} {'hdp PFLOP':>10} {'attn share':>10} {'torchtitan':>11} {'ratio':>6}")
    for r in rows:
        name = f"{r['dist']} {r['tokens'] / 2**20:.0f}M max {r['max_len'] // 1024}K"
        print(f"{name:28} {r['hdp_pflops']:10,.0f} {r['hdp_attention_share']:10.1%} "
              f"{r['torchtitan_pflops']:11,.0f} {r['torchtitan_over_hdp']:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
