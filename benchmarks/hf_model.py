"""Cost of training a transformers model through ``--hf-model`` vs the built-in decoder (same weights).

Both run ``train_step`` exactly as ``hdp train`` does, on one rank, on the same plans and batches: the
built-in ``Decoder`` and transformers' ``LlamaForCausalLM`` (hdp attention registered as
``attn_implementation="hdp"``) loaded with the built-in model's state dict. The ratio is the price of
transformers' modelling code around the same attention kernel. Steps interleave (built-in, HF, ...)
so machine load hits both alike; medians after warm-up. Also reports the step-0 loss of each (float32:
they differ only by rounding).

    python benchmarks/hf_model.py [--model tiny] [--steps 10] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import transformers
from transformers import LlamaForCausalLM

from hdp.plan import get_model
from hdp.runtime.config import TrainConfig
from hdp.runtime.model.hf_export import llama_config
from hdp.runtime.model.hf_model import HFCausalLM
from hdp.runtime.model.decoder import build_model
from hdp.runtime.train.step import build_optimizer, train_step
from hdp.runtime.train.run import Run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--global-batch-tokens", type=int, default=4096)
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    cfg = TrainConfig(model=args.model, global_batch_tokens=args.global_batch_tokens, capacity=args.global_batch_tokens,
                      max_seq_len=args.max_seq_len)
    run, cpu, shape = Run.from_config(cfg), torch.device("cpu"), get_model(args.model)
    builtin = build_model(shape, dtype=torch.float32, device=cpu, seed=0)
    hf = LlamaForCausalLM(llama_config(shape, torch.float32, args.max_seq_len))
    hf.load_state_dict(builtin.state_dict(), strict=True)
    models = {"builtin": builtin, "hf": HFCausalLM(hf.train())}
    opts = {k: build_optimizer(m, cfg.lr) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    first_loss: dict[str, float] = {}
    for step in range(args.warmup + args.steps):
        plan, batch = run.plan(step, 1), run.stream.batch(step)
        for name, model in models.items():
            start = time.perf_counter()
            res = train_step(model, opts[name], plan, batch, rank=0, group=None, device=cpu, timeout_s=60,
                             max_grad_norm=cfg.max_grad_norm)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
            first_loss.setdefault(name, res.loss)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "benchmark": "hf_model",
        "config": {"model": args.model, "global_batch_tokens": args.global_batch_tokens, "max_seq_len": args.max_seq_len,
                   "steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__, "device": "cpu"},
        "builtin_step_s_median": med["builtin"],
        "hf_step_s_median": med["hf"],
        "ratio_hf_vs_builtin": med["hf"] / med["builtin"],
        "step0_loss": first_loss,
        "step_s": times,
    }
    print(json.dumps(out))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
    print(f"\nbuilt-in {med['builtin'] * 1e3:.1f} ms/step  --hf-model {med['hf'] * 1e3:.1f} ms/step  "
          f"ratio {out['ratio_hf_vs_builtin']:.3f}  step-0 loss {first_loss['builtin']:.6f} vs {first_loss['hf']:.6f}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
