"""Measured memory of one training step vs the planner's memory model (``hdp.plan.cost.memory``).

One rank, one sequence of T tokens per step, the runtime's own model, ``ShardedAdamW`` and
``train_step``. Reported per (T, recompute): the measured model-state bytes (``state_bytes``) against
``state_bytes(...)`` of the planner, and the accelerator's peak allocated bytes above the states at
rest against the planner's activations ``T * activation_bytes_per_token``. The difference is what the
planner does not model (logits and loss in fp32, attention workspaces, allocator slack).

With an accelerator: a 1B-class LLaMA (h 2048, 16 layers, ffn 5504, vocab 32000), bf16, T = 8K..64K.
Without: the tiny model at small T, as a smoke test of the script (peaks are null on CPU).

    python benchmarks/memory.py [--tokens 8192 16384 32768 65536] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import platform
import random

import torch

from hdp.data.batches import GlobalBatch, Slice
from hdp.data.corpus import BytesCorpus
from hdp.plan import ModelConfig, build_cost_model, get_model, make_plan
from hdp.plan.cost.memory import activation_bytes_per_token, state_bytes
from hdp.runtime.model.decoder import build_model
from hdp.runtime.train.step import build_optimizer, train_step

ONE_B = ModelConfig("llama-1b", hidden_size=2048, num_layers=16, num_heads=16, num_kv_heads=16, ffn_size=5504,
                    vocab_size=32000)


def measure(cfg: ModelConfig, tokens: int, recompute: str, device: torch.device, dtype: torch.dtype) -> dict:
    model = build_model(cfg, dtype=dtype, device=device, seed=0, recompute=recompute == "full")
    opt = build_optimizer(model, 1e-4)
    rng = random.Random(tokens)
    batch = GlobalBatch(BytesCorpus((bytes(rng.randrange(256) for _ in range(tokens)),)), (Slice(0, 0, tokens),))
    plan = make_plan([tokens], 1, tokens, build_cost_model(cfg))
    acc = device.type != "cpu"
    peak = rest = None
    for step in range(2):  # step 0 allocates the optimizer's lazy pieces; measure step 1
        if acc:
            torch.accelerator.synchronize(device)
            torch.accelerator.reset_peak_memory_stats(device)
            rest = torch.accelerator.memory_allocated(device)
        train_step(model, opt, plan, batch, rank=0, group=None, device=device, timeout_s=600)
        if acc:
            torch.accelerator.synchronize(device)
            peak = torch.accelerator.max_memory_allocated(device)
    planned_act = tokens * activation_bytes_per_token(cfg, cfg.num_layers, recompute=recompute)
    dtype_name = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64"}[dtype]
    row = {
        "tokens": tokens, "recompute": recompute,
        "state_bytes": opt.state_bytes(),
        "planned_state_bytes": state_bytes(opt.numel, dtype=dtype_name, zero=0, world_size=1).total,
        "peak_above_rest_bytes": None if peak is None else peak - rest,
        "planned_activation_bytes": planned_act,
        "peak_over_planned": None if peak is None else (peak - rest) / planned_act,
    }
    del model, opt
    if acc:
        torch.accelerator.empty_cache()
    return row


def measure_or_skip(cfg: ModelConfig, tokens: int, recompute: str, device: torch.device, dtype: torch.dtype) -> dict:
    """Skip what the planner says cannot fit the device; record an out-of-memory instead of dying."""
    skip = {"tokens": tokens, "recompute": recompute, "state_bytes": None, "planned_state_bytes": None,
            "peak_above_rest_bytes": None, "peak_over_planned": None,
            "planned_activation_bytes": tokens * activation_bytes_per_token(cfg, cfg.num_layers, recompute=recompute)}
    if device.type != "cpu":
        _, total = torch.accelerator.get_memory_info(device)
        need = state_bytes(cfg.num_params, dtype="bfloat16", zero=0).peak + skip["planned_activation_bytes"]
        if need > 0.9 * total:
            return {**skip, "skipped": f"planner: needs {need / 1e9:.1f} GB of {total / 1e9:.1f} GB"}
    try:
        return measure(cfg, tokens, recompute, device, dtype)
    except torch.OutOfMemoryError as e:
        torch.accelerator.empty_cache()
        return {**skip, "skipped": f"out of memory: {str(e).splitlines()[0][:120]}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=None)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    device = torch.device(acc.type, 0) if acc is not None else torch.device("cpu")
    cfg, dtype = (ONE_B, torch.bfloat16) if acc is not None else (get_model("tiny"), torch.float32)
    tokens = args.tokens or ([8192, 16384, 32768, 65536] if acc is not None else [256, 1024])
    rows = [measure_or_skip(cfg, t, r, device, dtype) for r in ("none", "full") for t in tokens]
    out = {"benchmark": "memory", "config": {"model": cfg.name, "dtype": str(dtype), "tokens": tokens},
           "machine": {"platform": platform.platform(), "torch": torch.__version__, "device": str(device)},
           "results": rows}
    print(json.dumps(out))
    print(f"{'tokens':>7} {'recompute':>9} {'state MB':>9} {'planned':>9} {'peak-rest MB':>12} {'planned act MB':>14} {'ratio':>6}")
    for r in rows:
        if r.get("skipped"):
            print(f"{r['tokens']:>7} {r['recompute']:>9} skipped ({r['skipped']})")
            continue
        peak = "-" if r["peak_above_rest_bytes"] is None else f"{r['peak_above_rest_bytes'] / 1e6:,.0f}"
        ratio = "-" if r["peak_over_planned"] is None else f"{r['peak_over_planned']:.2f}"
        print(f"{r['tokens']:>7} {r['recompute']:>9} {r['state_bytes'] / 1e6:>9,.1f} {r['planned_state_bytes'] / 1e6:>9,.1f} "
              f"{peak:>12} {r['planned_activation_bytes'] / 1e6:>14,.1f} {ratio:>6}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
