"""Overhead of the HDP runtime on one rank vs a plain PyTorch training loop (same model, weights, batches).

HDP: plan the step, check the plan, materialise the rank's tokens from byte ranges, build the
attention layout, forward/backward, one flat gradient buffer (all-reduce skipped at world size 1),
global norm, clip, AdamW: ``train_step`` exactly as ``hdp train`` runs it, in a gloo group of one.
Plain: the batch's sequences packed in one buffer, the same document-masked attention kernel, mean
cross-entropy, ``clip_grad_norm_``, AdamW. Capacity = global batch, so both run one forward per step. Steps are
interleaved (hdp, plain, hdp, ...) so load on the machine hits both alike; medians after warm-up.
Target: overhead <= 3%.

    python benchmarks/overhead.py [--steps 12] [--model tiny]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hdp.plan import get_model
from hdp.runtime.config import TrainConfig
from hdp.runtime.attention.doc_attention import doc_attention
from hdp.runtime.launch.spawn import free_port
from hdp.runtime.model.decoder import build_model
from hdp.runtime.train.step import build_optimizer, train_step
from hdp.runtime.train.run import Run


def packed_doc_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout) -> torch.Tensor:
    """The plain loop's attention: the same document-masked kernel HDP uses, called directly on the
    packed buffer, so the comparison measures the runtime around the kernel, not a kernel choice.
    (Plain ``F.scaled_dot_product_attention`` per document is about 2x slower on CPU at head_dim 8.)"""
    cu = [0]
    for s in layout.spans:
        cu.append(cu[-1] + s.num_tokens)
    return doc_attention(q, k, v, cu)[0]


class PlainSpans:
    """The minimal layout the plain loop needs: packed document spans."""

    def __init__(self, lengths: list[int]) -> None:
        from hdp.runtime.attention.layout import Span

        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        self.spans = tuple(Span(i, a, a + n, 0) for i, (a, n) in enumerate(zip(starts, lengths)))
        self.rings = ()


def plain_step(model, opt, batch, max_grad_norm: float) -> float:
    start = time.perf_counter()
    lengths = batch.lengths
    ids = [torch.tensor(list(batch.read(i, 0, n)), dtype=torch.int64) for i, n in enumerate(lengths)]
    tokens = torch.cat(ids)
    positions = torch.cat([torch.arange(n) for n in lengths])
    labels = torch.cat([torch.cat([x[1:], torch.tensor([-100])]) for x in ids])
    opt.zero_grad(set_to_none=True)
    logits = model(tokens, positions, PlainSpans(lengths))
    loss = F.cross_entropy(logits, labels, ignore_index=-100)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--global-batch-tokens", type=int, default=4096)
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    cfg = TrainConfig(model=args.model, steps=args.steps, global_batch_tokens=args.global_batch_tokens,
                      capacity=args.global_batch_tokens, max_seq_len=args.max_seq_len)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))  # a fixed port collides with other runs
    dist.init_process_group("gloo", rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
    run = Run.from_config(cfg)
    cpu = torch.device("cpu")
    hdp_model = build_model(get_model(cfg.model), dtype=torch.float32, device=cpu, seed=0)
    plain_model = build_model(get_model(cfg.model), dtype=torch.float32, device=cpu, seed=0, attention=packed_doc_attention)
    hdp_opt = build_optimizer(hdp_model, cfg.lr)
    plain_opt = torch.optim.AdamW(  # the textbook loop: torch's own AdamW, decay on matrices
        [{"params": [p for p in plain_model.parameters() if p.ndim >= 2], "weight_decay": cfg.weight_decay},
         {"params": [p for p in plain_model.parameters() if p.ndim < 2], "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    hdp_times, plain_times = [], []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        plan = run.plan(step, 1)  # planning is part of hdp's cost
        train_step(hdp_model, hdp_opt, plan, run.stream.batch(step), rank=0, group=None, device=cpu,
                   timeout_s=60, max_grad_norm=cfg.max_grad_norm)
        t_hdp = time.perf_counter() - start
        t_plain = plain_step(plain_model, plain_opt, run.stream.batch(step), cfg.max_grad_norm)
        if step >= args.warmup:
            hdp_times.append(t_hdp)
            plain_times.append(t_plain)
    dist.destroy_process_group()
    hdp_med, plain_med = statistics.median(hdp_times), statistics.median(plain_times)
    out = {
        "benchmark": "overhead",
        "config": {"model": cfg.model, "global_batch_tokens": cfg.global_batch_tokens, "max_seq_len": cfg.max_seq_len,
                   "steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "device": "cpu"},
        "hdp_step_s_median": hdp_med,
        "plain_step_s_median": plain_med,
        "ratio": hdp_med / plain_med,
        "overhead_pct": 100 * (hdp_med / plain_med - 1),
        "target_pct": 3.0,
        "hdp_step_s": hdp_times,
        "plain_step_s": plain_times,
    }
    print(json.dumps(out))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
    print(f"\nhdp {hdp_med * 1e3:.1f} ms/step  plain {plain_med * 1e3:.1f} ms/step  ratio {out['ratio']:.3f}  "
          f"overhead {out['overhead_pct']:+.1f}% (target <= 3%)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
