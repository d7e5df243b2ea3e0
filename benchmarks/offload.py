"""Selective activation offloading: peak memory and step time of LLaMA-7B-shaped layers.

For each token count it runs the same layer stack with no offloading (the baseline of every ratio),
the planner's ratio for llama-7b, r = 0.5, r = 1.0 and torch's save_on_cpu, and prints a table and
JSON. With CUDA: hidden 4096, ffn 11008, 32 heads, bf16, 16K/32K/64K tokens. Without CUDA it runs a
reduced form (small shapes, float64) that checks every configuration is bit-identical to no
offloading. It also prints what the planner saves with offloading on byted-like and github-like
batches at 2M context.

    PYTHONPATH=. python benchmarks/offload.py [--tokens 16384 32768 65536] [--layers 6] [--json-out F]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from hdp.data.synthetic import sample_lengths
from hdp.plan import CostModel, ModelConfig, build_cost_model, get_model, make_plan
from hdp.plan.schedule.sharding import num_offload_layers, offload_token_limit, place
from hdp.runtime.offload.activations import CUDA_MIN_BYTES, ActivationOffloader


# -- a LLaMA layer (the runtime model is not used so the benchmark isolates offloading) ------------------
class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, f = cfg.hidden_size, cfg.ffn_size
        self.heads, self.kv_heads, self.eps = cfg.num_heads, cfg.num_kv_heads, cfg.norm_eps
        self.attn_norm, self.mlp_norm = nn.Parameter(torch.ones(h)), nn.Parameter(torch.ones(h))
        self.qkv = nn.Linear(h, h + 2 * cfg.kv_dim, bias=False)
        self.o = nn.Linear(h, h, bias=False)
        self.gate, self.up, self.down = nn.Linear(h, f, bias=False), nn.Linear(h, f, bias=False), nn.Linear(f, h, bias=False)

    def norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        d = h // self.heads
        q, k, v = self.qkv(self.norm(x, self.attn_norm)).split([h, self.kv_heads * d, self.kv_heads * d], dim=-1)
        q, k, v = (t.reshape(b, s, -1, d).transpose(1, 2) for t in (q, k, v))  # [b, heads, s, d]
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        x = x + self.o(attn.transpose(1, 2).reshape(b, s, h))
        y = self.norm(x, self.mlp_norm)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class Stack(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor, layer_context=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
        for i, layer in enumerate(self.layers):
            with layer_context(i) if layer_context else contextlib.nullcontext():
                x = layer(x)
        return x.float().square().mean()


# -- one configuration -----------------------------------------------------------------------------------
@dataclass
class Result:
    tokens: int
    config: str
    ratio: float | None
    offloaded_layers: int
    step_s: float | None = None
    peak_gib: float | None = None
    act_peak_gib: float | None = None
    offloaded_gib: float | None = None
    identical: bool | None = None
    max_grad_diff: float | None = None
    error: str | None = None


def offload_scope(off: ActivationOffloader, mode: str, layers: int, cuda: bool):  # type: ignore[no-untyped-def]
    """The context one micro-batch's forward and backward run in; yields the model's layer_context."""
    if mode == "layers":
        return off.micro_batch(layers)
    if mode == "save_on_cpu":  # PyTorch's baseline: every saved tensor of every layer, synchronously
        return contextlib.nullcontext(lambda i: torch.autograd.graph.save_on_cpu(pin_memory=cuda))
    return contextlib.nullcontext(None)


def run_config(model: Stack, x: torch.Tensor, name: str, ratio: float | None, mode: str, off: ActivationOffloader,
               steps: int, ref: list[torch.Tensor] | None) -> tuple[Result, list[torch.Tensor]]:
    n = len(model.layers)
    layers = num_offload_layers(ratio or 0.0, n) if mode == "layers" else 0
    res = Result(x.shape[1], name, ratio, n if mode == "save_on_cpu" else layers)
    cuda = x.device.type == "cuda"
    times, grads = [], []
    try:
        for _ in range(steps + 1):  # the first step warms up (and grows the pool)
            model.zero_grad(set_to_none=True)
            x.grad = None
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            with offload_scope(off, mode, layers, cuda) as layer_context:
                loss = model(x, layer_context)
                loss.backward()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            if mode == "layers":
                res.offloaded_gib = off.stats.offloaded_bytes / 2**30
            if cuda:
                res.peak_gib = torch.cuda.max_memory_allocated() / 2**30
                res.act_peak_gib = (torch.cuda.max_memory_allocated() - base) / 2**30
            del loss
        grads = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    except torch.OutOfMemoryError:
        res.error = "OOM"
        return res, []
    except RuntimeError as e:  # e.g. pinned host memory unavailable: raised before the step
        res.error = str(e).split("\n")[0][:120]
        return res, []
    res.step_s = statistics.median(times[1:])
    if ref is not None:
        res.identical = all(torch.equal(a, b) for a, b in zip(grads, ref))
        res.max_grad_diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(grads, ref))
    return res, grads


def planner_ratio(cost: CostModel, capacity: int, tokens: int) -> tuple[float | None, float]:
    """The least whole-layer ratio j/(l-2) at which the planner's memory rule lets one llama-7b rank hold
    ``tokens`` tokens (hdp.plan.schedule.sharding.offload_token_limit), and the largest ratio whose copies hide
    under compute (CostModel.max_offload_ratio); the planner itself only offloads up to the latter and
    uses more ranks beyond it. None when even r = 1 does not fit."""
    middle = cost.layers - 2
    hide = cost.max_offload_ratio(tokens)
    for j in range(middle + 1):
        if offload_token_limit(capacity, cost.layers, j / middle) >= tokens:
            return j / middle, hide
    return None, hide


def bench(args: argparse.Namespace) -> dict[str, object]:
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    full = get_model("llama-7b")
    if cuda:
        cfg, dtype, tokens = replace(full, num_layers=args.layers), torch.bfloat16, args.tokens
    else:  # reduced form: shows the bookkeeping and bit-exactness, not speed
        cfg = ModelConfig("llama-7b-reduced", 256, args.layers, 8, 8, 688, 256)
        dtype, tokens = torch.float64, args.cpu_tokens
    cost7b = build_cost_model("llama-7b")
    capacity = args.capacity or cost7b.derived_capacity(args.ranks)
    results: list[Result] = []
    ratios: dict[int, dict[str, float | None]] = {}
    for t, t_full in zip(tokens, args.tokens):
        torch.manual_seed(0)
        model = Stack(cfg).to(device=device, dtype=dtype)
        x = torch.randn(1, t, cfg.hidden_size, device=device, dtype=dtype, requires_grad=True)
        min_bytes = args.min_bytes if args.min_bytes is not None else (CUDA_MIN_BYTES if cuda else 0)
        off = ActivationOffloader(device, cfg.num_layers, model.parameters(), min_bytes=min_bytes)
        # The planner's ratio for a llama-7b rank holding t_full tokens (the CPU form borrows the CUDA sizes').
        r_plan, r_hide = planner_ratio(cost7b, capacity, t_full)
        ratios[t] = {"planner_tokens": t_full, "r_fit": r_plan, "r_hide_max": r_hide}
        configs = [("none", 0.0, "none")]
        if r_plan is not None:
            configs.append((f"planner r={r_plan:.3f}", r_plan, "layers"))
        configs += [("r=0.5", 0.5, "layers"), ("r=1.0", 1.0, "layers"), ("save_on_cpu", None, "save_on_cpu")]
        ref = None
        for name, ratio, mode in configs:
            res, grads = run_config(model, x, name, ratio, mode, off, args.steps, ref)
            if ref is None:
                ref = grads or None
            results.append(res)
            del grads
            if cuda:
                torch.cuda.empty_cache()
        del model, x, off
        if cuda:
            torch.cuda.empty_cache()
            _empty_host_cache()
    return {"results": [r.__dict__ for r in results], "model": cfg.__repr__(), "dtype": str(dtype),
            "capacity_tokens_7b": capacity, "planner_ratios": ratios}


def _empty_host_cache() -> None:
    fn = getattr(torch._C, "_host_emptyCache", None)
    if fn is not None:
        fn()


def planner_summary(ranks: int, capacities: list[int], tokens: int, seed: int) -> list[dict[str, object]]:
    """Ranks the planner saves with offloading (plan.extra['offload_ranks_saved']) at 2M context."""
    cost = build_cost_model("llama-7b")
    out = []
    for dist in ("byted", "github"):
        lengths = sample_lengths(dist, tokens, 2**21, seed)
        for cap in capacities:
            t0 = time.perf_counter()
            plan = make_plan(lengths, ranks, cap, cost, "hdp")
            plan_s = time.perf_counter() - t0
            base = make_plan(lengths, ranks, cap, cost, "hdp-balance")
            ratios = collections.Counter(round(place(n, cap, cost, True).offload_ratio, 3) for n in lengths if n > cap)
            out.append({"dist": dist, "ranks": ranks, "capacity": cap, "long_sequences": sum(ratios.values()),
                        "offload_ranks_saved": plan.extra["offload_ranks_saved"],
                        "ratios": {str(k): v for k, v in sorted(ratios.items())},
                        "predicted_step_s": plan.predicted_step_time_s,
                        "predicted_step_s_no_offload": base.predicted_step_time_s,
                        "max_ring": plan.max_ring, "max_ring_no_offload": base.max_ring, "planning_s": plan_s})
    return out


def fmt(v: object, spec: str) -> str:
    return "-" if v is None else str(v) if isinstance(v, bool) else format(v, spec)


def print_table(report: dict[str, object]) -> None:
    rows = report["results"]
    for t, r in report["planner_ratios"].items():
        print(f"planner (llama-7b, C={report['capacity_tokens_7b']}): a rank holding {r['planner_tokens']} tokens needs "
              f"r >= {fmt(r['r_fit'], '.3f')}; copies hide under compute up to r = {r['r_hide_max']:.3f}"
              + ("" if t == r["planner_tokens"] else f"  (CPU row {t} tokens)"))
    base = {r["tokens"]: r["step_s"] for r in rows if r["config"] == "none"}
    print(f"{'tokens':>7} {'config':<18} {'layers':>6} {'step ms':>9} {'vs r=0':>7} {'peak GiB':>9} {'act GiB':>8} "
          f"{'host GiB':>9} {'identical':>9}  note")
    for r in rows:
        rel = r["step_s"] / base[r["tokens"]] if r["step_s"] and base.get(r["tokens"]) else None
        ms = r["step_s"] * 1e3 if r["step_s"] else None
        print(f"{r['tokens']:>7} {r['config']:<18} {r['offloaded_layers']:>6} {fmt(ms, '9.1f')} {fmt(rel, '7.3f')} "
              f"{fmt(r['peak_gib'], '9.2f')} {fmt(r['act_peak_gib'], '8.2f')} {fmt(r['offloaded_gib'], '9.3f')} "
              f"{fmt(r['identical'], '')!s:>9}  {r['error'] or ''}")
    print("\nplanner, llama-7b, 2M context (ranks saved = rank-slots of long sequences without minus with offloading)")
    for p in report["planner"]:
        print(f"  {p['dist']:<7} ranks={p['ranks']} C={p['capacity']:>6}: {p['long_sequences']} sequences > C, "
              f"ranks saved {p['offload_ranks_saved']}, max ring {p['max_ring_no_offload']} -> {p['max_ring']}, "
              f"predicted step {p['predicted_step_s_no_offload']:.1f} s -> {p['predicted_step_s']:.1f} s, "
              f"ratios {p['ratios']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[16384, 32768, 65536], help="tokens per micro-batch (CUDA)")
    p.add_argument("--cpu-tokens", type=int, nargs="+", default=[256, 512, 1024],
                   help="tokens in the reduced CPU form, one per --tokens entry (whose planner ratio it uses)")
    p.add_argument("--layers", type=int, default=6, help="layers in the stack (first and last stay resident)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    p.add_argument("--ranks", type=int, default=1024)
    p.add_argument("--capacity", type=int, default=None, help="planner capacity (default: derived for llama-7b)")
    p.add_argument("--plan-tokens", type=int, default=32 * 2**20, help="global batch for the planner summary")
    p.add_argument("--min-bytes", type=int, default=None,
                   help="smallest saved tensor to offload (default 1 MiB with CUDA, 0 in the reduced CPU form)")
    p.add_argument("--cpu", action="store_true", help="run the reduced CPU form even when CUDA is available")
    p.add_argument("--json-out", metavar="FILE", help="also write the JSON report here")
    args = p.parse_args(argv)
    report = bench(args)
    cap7b = report["capacity_tokens_7b"]
    report["planner"] = planner_summary(args.ranks, sorted({cap7b, 8192}), args.plan_tokens, 0)
    report["env"] = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                     "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.cpu else "cpu",
                     "cpu_threads": torch.get_num_threads(), "argv": sys.argv[1:]}
    print_table(report)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
