"""Every table of measured numbers in README.md and docs/*.md, rendered from benchmarks/results/.

A table lives between ``<!-- table:NAME -->`` and ``<!-- /table -->``; its first line names the
benchmark command that writes its JSON, so every number has one command behind it and one file
beside it. A table whose JSON is missing says so (GPU figures, say, until a GPU run writes them).

    python benchmarks/report.py            # rewrite every table in place
    python benchmarks/report.py --check    # exit 1 naming each table that differs from its JSON
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = "benchmarks/results"
MARKER = re.compile(r"(<!-- table:([A-Za-z0-9_-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


@dataclass(frozen=True)
class Table:
    name: str
    command: str
    """The benchmark command that writes ``source`` (shown above the table)."""
    source: str
    """File under benchmarks/results/: .json, or .jsonl (one JSON object per line); several,
    comma-separated, give the renderer a list."""
    render: Callable[[object], str]
    missing: str = "not measured yet"
    """What the table says while ``source`` does not exist."""


TABLES: dict[str, Table] = {}


def table(name: str, command: str, source: str, missing: str = "not measured yet"):
    def register(fn: Callable[[object], str]) -> Callable[[object], str]:
        TABLES[name] = Table(name, command, source, fn, missing)
        return fn
    return register


def load(root: str, source: str) -> object | None:
    path = os.path.join(root, RESULTS, source)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        if source.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


def render(t: Table, root: str = ROOT) -> str:
    """The block between the markers: the command line, then the table (or why there is none)."""
    sources = t.source.split(",")
    head = f"`{t.command}` → " + ", ".join(f"`{RESULTS}/{s}`" for s in sources) + "\n\n"
    loaded = [load(root, s) for s in sources]
    data = None if any(d is None for d in loaded) else loaded[0] if len(loaded) == 1 else loaded
    body = f"*{t.missing}: run the command above.*\n" if data is None else t.render(data)
    return head + body


# ---- formatting -------------------------------------------------------------------------------

def span(values, fmt: str = "{:.2f}", unit: str = "") -> str:
    """min–max of values in one format, or the one value when they agree at that precision."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return f"{lo}{unit}" if lo == hi else f"{lo}–{hi}{unit}"


def grid(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def k(n: int) -> str:
    return f"{n // 2**20}M" if n >= 2**20 and n % 2**20 == 0 else f"{n // 1024}K"


DIST = {"byted": "Byted-like", "github": "GitHub-like"}


# ---- simulator ----------------------------------------------------------------------------------

def seed_runs(data: dict, algo: str, dist: str) -> list[dict]:
    return [r for r in data["runs"] if r["ring_algo"] == algo and r["dist"] == dist]


def common_strategies(runs: list[dict]) -> list[str]:
    """Strategies every run has (a strategy added between runs would otherwise span fewer seeds)."""
    names = list(dict.fromkeys(s for r in runs for s in r["strategies"]))
    return [s for s in names if all(s in r["strategies"] for r in runs)]


def strategy_span(runs: list[dict], strategy: str, key: str, fmt: str = "{:.2f}", unit: str = "") -> str:
    vals = [r["strategies"][strategy][key] for r in runs if strategy in r["strategies"]]
    return span(vals, fmt, unit) if vals else "–"


def vs(runs: list[dict], strategy: str, base: str) -> str:
    vals = [r["strategies"][base]["step_time_s"] / r["strategies"][strategy]["step_time_s"] for r in runs
            if strategy in r["strategies"] and base in r["strategies"]]
    return span(vals, unit="x") if vals else "–"


SIM_SEEDS = "python benchmarks/sim_seeds.py"


@table("headline", SIM_SEEDS, "sim_seeds.json")
def headline(data: dict) -> str:
    seeds = data["seeds"]
    rows = []
    two_level = [r for r in data["runs"] if r["ring_algo"] == "two-level"]
    for strategy in [s for s in ("static", "pow2", "hdp", "hdp-wide", "auto") if s in common_strategies(two_level)]:
        row = [f"`{strategy}`"]
        for dist in ("byted", "github"):
            runs = seed_runs(data, "two-level", dist)
            row += [strategy_span(runs, strategy, "step_time_s", "{:.1f}"), vs(runs, strategy, "static"),
                    vs(runs, strategy, "pow2")]
        rows.append(row)
    head = ["strategy"] + [f"{DIST[d]}: {c}" for d in ("byted", "github") for c in ("step (s)", "vs static", "vs pow2")]
    return (f"LLaMA-7B, 1,024 simulated H100s (8 per node), 32M-token batches up to 2M tokens, two-level rings for "
            f"every strategy; min–max over seeds 0–{seeds - 1}:\n\n" + grid(head, rows))


@table("sim_seeds", SIM_SEEDS, "sim_seeds.json")
def sim_seeds(data: dict) -> str:
    rows = []
    algos = list(dict.fromkeys(r["ring_algo"] for r in data["runs"]))
    for algo in algos:
        for s in common_strategies([r for r in data["runs"] if r["ring_algo"] == algo]):
            row = [algo, f"`{s}`"]
            for dist in ("byted", "github"):
                runs = seed_runs(data, algo, dist)
                row += [strategy_span(runs, s, "step_time_s", "{:.1f}"), vs(runs, s, "static"), vs(runs, s, "pow2"),
                        strategy_span(runs, s, "gap_to_lower_bound", unit="x")]
            rows.append(row)
    head = ["ring algo", "strategy"] + [f"{d} {c}" for d in ("byted", "github")
                                        for c in ("step (s)", "vs static", "vs pow2", "vs LB")]
    return (f"Seeds 0–{data['seeds'] - 1}, one batch each; min–max over seeds of each run's own ratio "
            f"(`hdp simulate`'s defaults: LLaMA-7B, 1,024 GPUs, 32M tokens, 2M max):\n\n" + grid(head, rows))


@table("ablation", "python benchmarks/sim_ablation.py --steps 5", "sim_ablation.json")
def ablation(data: dict) -> str:
    rows = []
    for name, r in data["strategies"].items():
        pub = r.get("published_speedup")
        rows.append([f"`{name}`", f"{r['step_time_s']:.1f}", f"{r['speedup_vs_static']:.2f}x",
                     "" if pub is None else f"{pub:.2f}x", pct(r["mfu"]), pct(r["compute_frac"]),
                     pct(r["exposed_comm_frac"]), f"{pct(r['idle_frac'])} ({pct(r['ring_wait_frac'])} / {pct(r['dp_bubble_frac'])})",
                     f"{r['gap_to_lower_bound']:.2f}x", r["max_ring"]])
    head = ["strategy", "step (s)", "vs static", "published", "MFU", "compute", "exposed comm",
            "idle (ring wait / DP bubble)", "vs LB", "longest ring"]
    return (f"LLaMA-7B, {data['gpus']:,} GPUs, C = {data['capacity']:,}, {k(data['max_len'])} max, "
            f"{data['tokens'] // 2**20}M-token Byted-like batches, flat rings, no topology; mean of "
            f"{data['steps']} batches (seeds 0–{data['steps'] - 1}):\n\n" + grid(head, rows))


@table("scaling", "python benchmarks/sim_scaling.py", "sim_scaling.json")
def scaling(data: dict) -> str:
    ctxs = sorted({r["max_len"] for r in data["rows"]})
    rows = []
    for key in dict.fromkeys((r["model"], r["gpus"], r["tp"], r["pp"], r["dist"]) for r in data["rows"]):
        cells = {r["max_len"]: r for r in data["rows"] if (r["model"], r["gpus"], r["tp"], r["pp"], r["dist"]) == key}
        model, gpus, tp, pp, dist = key
        row = [model, f"{gpus:,}", tp, pp, f"{gpus // (tp * pp):,}", f"{next(iter(cells.values()))['capacity']:,}",
               DIST[dist]]
        for c in ctxs:
            s = cells[c]["strategies"] if c in cells else None
            row.append("–" if s is None else f"{s['hdp']['speedup_vs_static']:.2f}x / "
                       f"{s['hdp-balance']['speedup_vs_static']:.2f}x ({s['pow2']['speedup_vs_static']:.2f}x)")
        rows.append(row)
    return ("`hdp` / `hdp-balance` (no offloading) over static, pow2 over static in brackets; one batch (seed 0) "
            "per cell, flat rings; C from the runtime's memory layout:\n\n"
            + grid(["model", "GPUs", "tp", "pp", "HDP ranks", "C", "batch"] + [k(c) for c in ctxs], rows))


@table("rings", "python benchmarks/ring_targets.py", "ring_targets.json")
def rings(data: dict) -> str:
    rows = []
    for cell in data["cells"]:
        flat_static = cell["by_algo"].get("flat", {}).get("static")
        for algo, strategies in cell["by_algo"].items():
            static, pow2 = strategies.get("static"), strategies.get("pow2")
            for name, r in strategies.items():
                step = r["step_time_s"]
                rows.append([f"{cell['gpus']:,}", cell["dist"], algo, f"`{name}`", f"{step:.2f}",
                             f"{r['gap_to_lower_bound']:.3f}x", f"{r['gap_to_area_floor']:.2f}x",
                             f"{static['step_time_s'] / step:.2f}x" if static else "",
                             f"{flat_static['step_time_s'] / step:.2f}x" if flat_static else "",
                             f"{pow2['step_time_s'] / step:.2f}x" if pow2 else "", f"{r['wall_s']:.1f}"])
    head = ["GPUs", "batch", "ring algo", "strategy", "step (s)", "vs LB", "vs area floor", "vs static, same algo",
            "vs flat-ring static", "vs pow2, same algo", "plan+sim (s)"]
    return (f"{data['model']} (tp {data.get('tp', 1)}), {k(data['max_len'])} max, one batch (seed 0) per cell, "
            "32M tokens per 1,024 HDP ranks, "
            "8 GPUs per node" + ("; static is left out at scale (its planner is the slow part)"
                                 if any("static" not in a for c in data["cells"] for a in c["by_algo"].values()) else "")
            + ":\n\n" + grid(head, rows))


table("rings_70b", "python benchmarks/ring_targets.py --model llama-70b --tp 8 --gpus 8192 --algos two-level --scale '' "
      "--out benchmarks/results/ring_targets_70b.json", "ring_targets_70b.json")(rings)


@table("rings_noise", "python benchmarks/ring_targets.py --seeds 5 --rows auto --algos two-level --scale 4096 "
       "--jitter 0.1 --noise-seeds 3 --out benchmarks/results/ring_targets_jitter.json", "ring_targets_jitter.json")
def rings_noise(data: dict) -> str:
    def cell(r: dict | None) -> str:
        return "–" if r is None else f"{r['min']:.3f}–{r['max']:.3f}x ({r['geomean']:.3f}x)"

    rows = []
    for key, clean in data["auto_ranges_clean"].items():
        noisy = data["auto_ranges"][key]
        gpus, dist, algo = key.split()
        rows.append([f"{int(gpus):,}", DIST[dist], algo] + [cell(by.get(b)) for by in (clean, noisy)
                                                          for b in ("pow2", "static")])
    head = ["GPUs", "batch", "ring algo", "auto vs pow2", "auto vs static", f"jitter {data['jitter']:g}: vs pow2",
            f"jitter {data['jitter']:g}: vs static"]
    return (f"{data['model']}, 2M max, seeds 0–{data['seeds'] - 1} (one batch each), 32M tokens per 1,024 GPUs; "
            f"`auto`'s speedup, min–max over seeds (geometric mean), without noise and with lognormal kernel "
            f"jitter {data['jitter']:g} (mean of {data['noise_seeds']} noise seeds; the same plans):\n\n" + grid(head, rows))


# ---- planner ------------------------------------------------------------------------------------

@table("plan_speed", "python benchmarks/plan_speed.py | grep '^{' > benchmarks/results/plan_speed.jsonl",
       "plan_speed.jsonl")
def plan_speed(data: list) -> str:
    """Wall time of ``make_plan``; the CPU time too where the benchmark records it (newer plan_speed.py)."""
    names = list(dict.fromkeys(r["strategy"] for r in data))
    cpu = all("planning_cpu_s" in r for r in data)

    def cell(r: dict) -> str:
        wall = r.get("planning_wall_s", r.get("planning_time_s"))
        return f"{wall:.2f} s" + (f" ({r['planning_cpu_s']:.2f} s CPU)" if cpu else "")

    rows = [[f"{ranks:,}"] + [next((cell(r) for r in data if r["ranks"] == ranks and r["strategy"] == n), "–")
                              for n in names]
            for ranks in dict.fromkeys(r["ranks"] for r in data)]
    capacity = sorted({r["capacity"] for r in data}) if all("capacity" in r for r in data) else None
    tokens = ", ".join(f"{t // 2**20}M" for t in sorted({r["tokens"] for r in data}))
    return (f"`make_plan` alone, best of the benchmark's repeats, Byted-like batches of {tokens} tokens up to 2M, "
            + (f"C = {', '.join(f'{c:,}' for c in capacity)}" if capacity else "C = 8,192")
            + "; `hdp-balance` is hdp without offloading:\n\n"
            + grid(["ranks"] + [f"`{n}`" for n in names], rows))


@table("plan_quality", "python benchmarks/plan_quality.py --seeds 5 | grep '^{' > benchmarks/results/plan_quality.jsonl",
       "plan_quality.jsonl")
def plan_quality(data: list) -> str:
    names = list(dict.fromkeys(r["strategy"] for r in data))
    rows = []
    for dist, ranks, max_len in dict.fromkeys((r["dist"], r["ranks"], r["max_len"]) for r in data):
        rs = [r for r in data if (r["dist"], r["ranks"], r["max_len"]) == (dist, ranks, max_len)]
        row = [DIST[dist], f"{ranks:,} ({k(max_len)})",
               span([r["micro_batches_per_rank"] for r in rs if r["strategy"] == names[0]], "{:.1f}")]
        for n in names:
            row += [span([r["work_ratio"] for r in rs if r["strategy"] == n], "{:.3f}"),
                    span([r["cost_ratio"] for r in rs if r["strategy"] == n], "{:.3f}")]
        rows.append(row)
    seeds = sorted({r["seed"] for r in data})
    head = ["batch", "ranks (max len)", "micro-batches / rank"] + [f"`{n}` {m}" for n in names for m in ("work", "cost")]
    return (f"Makespan / lower bound, 32M-token batches, C = 8,192, LLaMA-7B, min–max over seeds "
            f"{seeds[0]}–{seeds[-1]}; *work* is docs/plan-format.md's measure, *cost* the planner's cost model:\n\n"
            + grid(head, rows))


# ---- runtime on CPU -----------------------------------------------------------------------------

@table("quickstart", "python benchmarks/quickstart.py", "quickstart.json")
def quickstart(data: dict) -> str:
    rows = []
    for r in data["commands"]:
        name = r["command"].split(" (")[0]
        rows.append([f"`{name}`" if name.startswith("hdp") else name, len(r["wall_s"]), span(r["wall_s"], "{:.0f}", " s"),
                     f"{r['loss_first']:.2f} → {r['loss_last']:.2f}", r["steps"]])
    return (f"Wall time of the README's commands on this project's {data['machine']['cpus']}-core machine "
            f"(shared; load average {span(data['load'], '{:.1f}')}):\n\n"
            + grid(["command", "runs", "wall time", "loss, first → last step", "steps"], rows))


@table("overhead", "python benchmarks/overhead.py --steps 40 --json-out benchmarks/results/overhead_cpu.json",
       "overhead_cpu.json")
def overhead(data: dict) -> str:
    c = data["config"]
    return grid(["model", "tokens / step", "hdp (ms/step)", "plain PyTorch loop (ms/step)", "overhead", "target"],
                [[c["model"], f"{c['global_batch_tokens']:,}", f"{data['hdp_step_s_median'] * 1e3:.1f}",
                  f"{data['plain_step_s_median'] * 1e3:.1f}", f"{data['overhead_pct']:+.1f}%",
                  f"≤ {data['target_pct']:.0f}%"]])


@table("train_throughput", "python benchmarks/train_throughput.py --json-out benchmarks/results/train_throughput_cpu.json",
       "train_throughput_cpu.json")
def train_throughput(data: dict) -> str:
    c = data["config"]
    rows = [[f"`{s}`", f"{r['tokens_per_s']:,.0f}", f"{r['speedup_vs_static']:.2f}x",
             f"{r['predicted_speedup_vs_static']:.2f}x" if r.get("predicted_speedup_vs_static") else "–",
             f"{r['rings_per_step']:.1f}", r["max_ring"]] for s, r in data["results"].items()]
    return (f"{c['nproc']} gloo ranks on {data['machine']['cpus']} cores, `{c['model']}`, {c['global_batch_tokens']:,}-token "
            f"batches, C = {c['capacity']:,}, {c['steps']} steps (step 0 not counted):\n\n"
            + grid(["strategy", "tokens/s", "vs static", "predicted vs static (H100 model)", "rings / step", "max ring"], rows))


@table("attention", "python benchmarks/attention.py --json-out benchmarks/results/attention_cpu.json", "attention_cpu.json")
def attention(data: dict) -> str:
    rows = [[f"documents of {r['doc']:,}", f"{r['packed_vs_sdpa']:.2f}x of batched causal SDPA"] for r in data["packed"]]
    rows += [[f"ring of {r['ring']}, {r['length']:,} tokens", f"{r['block_efficiency']:.2f}x of whole-sequence SDPA's FLOP rate"]
             for r in data["ring"]]
    return (f"One device ({data['device']}, {data['dtype'].removeprefix('torch.')}, {data['heads']} heads × "
            f"{data['head_dim']}):\n\n" + grid(["case", "speed"], rows))


@table("hf_model", "python benchmarks/hf_model.py --json-out benchmarks/results/hf_model_cpu.json", "hf_model_cpu.json")
def hf_model(data: dict) -> str:
    c, loss = data["config"], data["step0_loss"]
    return grid(["model", "built-in (ms/step)", "`--hf-model` LlamaForCausalLM (ms/step)", "ratio", "step-0 loss (built-in / HF)"],
                [[c["model"], f"{data['builtin_step_s_median'] * 1e3:,.0f}", f"{data['hf_step_s_median'] * 1e3:,.0f}",
                  f"{data['ratio_hf_vs_builtin']:.2f}", f"{loss['builtin']:.6f} / {loss['hf']:.6f}"]])


@table("ring_kernels", "python benchmarks/ring_kernels.py --json-out benchmarks/results/ring_kernels_cpu.json",
       "ring_kernels_cpu.json")
def ring_kernels(data: dict) -> str:
    rows = [[v, f"{data['median_s'][v] * 1e3:.1f}", f"{data['vs_flat'][v]:.2f}x"] for v in data["median_s"]]
    return (f"One member's blocks of a ring of {data['ring']} ({data['ring'] // data['node']} nodes × {data['node']}), "
            f"{data['member_tokens']:,} tokens a member, no communication; {data['device']}, {data['dtype']}:\n\n"
            + grid(["variant", "median (ms)", "vs flat"], rows))


@table("ring_algos", "python benchmarks/ring_algos.py --json-out benchmarks/results/ring_algos_cpu.json",
       "ring_algos_cpu.json")
def ring_algos(data: dict) -> str:
    a, t = data["attention"], data["train_step"]
    rows = []
    for algo in ("flat", "two-level", "bidirectional"):
        rows.append([algo, f"{a[algo]['ratio_vs_flat']:.2f} / {a[algo]['cpu_ratio_vs_flat']:.2f}",
                     f"{t[algo]['ratio_vs_flat']:.2f} / {t[algo]['cpu_ratio_vs_flat']:.2f}"])
    return (f"{data['ranks']} gloo ranks as {data['ranks'] // data['gpus_per_node']} nodes × {data['gpus_per_node']} on "
            f"{data['cpus']} cores; ratio to the flat ring, median wall / CPU time of rank 0:\n\n"
            + grid(["ring algo", f"one ring of {data['ranks']}, {a['tokens']:,} tokens, fwd+bwd",
                    f"a `{t['model']}` train step"], rows))


@table("offload", "python benchmarks/offload.py --cpu --json-out benchmarks/results/offload_cpu.json", "offload_cpu.json")
def offload(data: dict) -> str:
    rows = [[DIST[p["dist"]], f"{p['ranks']:,}", f"{p['capacity']:,}", p["long_sequences"], f"{p['offload_ranks_saved']:,}",
             f"{p['max_ring_no_offload']} → {p['max_ring']}",
             f"{p['predicted_step_s_no_offload']:.1f} → {p['predicted_step_s']:.1f}"] for p in data["planner"]]
    exact = [r for r in data["results"] if r.get("identical") is not None]
    same = all(r["identical"] for r in exact)
    return ("What the planner's offloading saves (LLaMA-7B, 32M-token batches up to 2M, seed 0; `hdp-balance` → "
            "`hdp`, the same plan without and with offloading):\n\n"
            + grid(["batch", "ranks", "C", "sequences > C", "rank-slots saved", "largest ring", "predicted step (s)"], rows)
            + f"\nOn CPU the copies run synchronously: {len(exact)} offloading configurations, gradients "
            + ("bit-identical to no offloading" if same else "NOT identical to no offloading")
            + ". Overlap and peak memory need a GPU (`python benchmarks/gpu_check.py`); not measured.\n")


@table("sim_vs_runtime", "for s in hdp static pow2; do PYTHONPATH=. python benchmarks/sim_vs_runtime.py --strategy $s "
       "--out benchmarks/results/sim_vs_runtime_$s.json; done",
       "sim_vs_runtime_hdp.json,sim_vs_runtime_static.json,sim_vs_runtime_pow2.json")
def sim_vs_runtime(data: list) -> str:
    rows = []
    for d in data:
        c = d["config"]
        if d["status"] != "measured":
            rows.append([f"`{c['strategy']}`", d["status"], "", ""])
            continue
        steady = d["ratio_sim_over_measured"][1:]
        rows.append([f"`{c['strategy']}`", f"{d['mean_ratio_after_warmup']:.2f}", span(steady),
                     span(d["measured_step_s"][1:], "{:.1f}", " s")])
    c = data[0]["config"]
    return (f"`{c['model']}`, {c['ranks']} ranks, {c['tokens']:,}-token batches, C = {c['capacity']:,}, "
            f"{c['steps']} steps (step 0 is warm-up):\n\n"
            + grid(["strategy", "simulated / measured, mean", "per step", "measured step"], rows))


@table("pp_bubble", "python benchmarks/pp_bubble.py --json-out benchmarks/results/pp_bubble_cpu.json",
       "pp_bubble_cpu.json")
def pp_bubble(data: dict) -> str:
    rows = []
    for r in data["runs"]:
        steps = r["steps"]
        mbs = sorted({n for s in steps for n in s["micro_batches"]})
        rows.append([f"`--pp {r['pp']}`", r["pipelines"], "/".join(map(str, mbs)),
                     span([s["measured"] for s in steps[1:]]), span([s["simulated"] for s in steps[1:]]),
                     span([s["predicted"] for s in steps[1:]]), span([s["ratio"] for s in steps[1:]]),
                     f"{r['mean_ratio']:.2f}"])
    return (f"`{data['model']}`, {data['nproc']} CPU processes, {data['tokens']:,}-token batches, max length "
            f"{data['max_len']:,}, profile `{data['profile']}`, steps 1–{len(data['runs'][0]['steps']) - 1} "
            "(step 0 is warm-up):\n\n"
            + grid(["stages", "pipelines", "micro-batches per pipeline", "measured bubble", "simulated (1F1B)",
                    "planner", "measured / simulated", "mean"], rows))


@table("offload_ratios", "python benchmarks/offload.py --cpu --json-out benchmarks/results/offload_cpu.json",
       "offload_cpu.json")
def offload_ratios(data: dict) -> str:
    layers = 30  # llama-7b's 32 layers less the first and the last, which stay resident
    rows = [[f"{int(t) // 1024}K", f"{r['r_fit']:.3f} ({round(r['r_fit'] * layers)} of {layers} layers)"
             if r["r_fit"] is not None else "none fits", f"{r['r_hide_max']:.3f}"]
            for t, r in ((r["planner_tokens"], r) for r in data["planner_ratios"].values())]
    return (f"Planner ratios for a llama-7b rank (C = {data['capacity_tokens_7b']:,} tokens, derived for 1,024 ranks "
            "on the H100 profile):\n\n"
            + grid(["tokens on one rank", "least r whose memory rule fits", "largest r whose copies hide (max_offload_ratio)"],
                   rows))


def files(root: str) -> list[str]:
    docs = os.path.join(root, "docs")
    return ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(docs) if f.endswith(".md"))


def refresh(root: str = ROOT, write: bool = False) -> tuple[list[str], list[str]]:
    """(stale tables as 'file: table NAME', unknown table names); rewrites the files when ``write``."""
    stale, unknown = [], []
    for rel in files(root):
        path = os.path.join(root, rel)
        with open(path) as f:
            text = f.read()

        def sub(m: re.Match) -> str:
            name = m.group(2)
            if name not in TABLES:
                unknown.append(f"{rel}: table {name!r}")
                return m.group(0)
            new = render(TABLES[name], root)
            if new != m.group(3):
                stale.append(f"{rel}: table {name}")
            return m.group(1) + new + m.group(4)

        new_text = MARKER.sub(sub, text)
        if write and new_text != text:
            with open(path, "w") as f:
                f.write(new_text)
    return stale, unknown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 naming every stale table")
    ap.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    stale, unknown = refresh(args.root, write=not args.check)
    if unknown:
        print(f"report: unknown {', '.join(unknown)}; known tables: {', '.join(TABLES)}", file=sys.stderr)
        return 2
    if args.check and stale:
        for s in stale:
            print(f"report: {s} differs from its JSON; run python benchmarks/report.py", file=sys.stderr)
        return 1
    if not args.check:
        print(f"report: {len(stale)} table(s) rewritten" + (f": {', '.join(stale)}" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
