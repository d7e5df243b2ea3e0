"""Timelines (per-rank Gantt) and the breakdown bar chart, as PNGs (matplotlib, Agg backend)."""

from __future__ import annotations

import os

from hdp.sim.training_step import StepResult

COLORS = {"compute": "#4C72B0", "comm": "#C44E52", "grad_sync": "#8172B2", "ring_wait": "#BBBBBB",
          "pp_bubble": "#DD8452", "dp_bubble": "#E5E5E5"}
LABELS = {"compute": "compute", "comm": "exposed comm", "grad_sync": "grad all-reduce",
          "ring_wait": "ring wait", "pp_bubble": "PP bubble", "dp_bubble": "DP bubble (wait for slowest)"}
MAX_ROWS = 64


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sample_ranks(n: int, limit: int = MAX_ROWS) -> list[int]:
    """All ranks when few; else evenly spaced ones."""
    if n <= limit:
        return list(range(n))
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


def gantt(result: StepResult, path: str, title: str) -> None:
    plt = _pyplot()
    rows = sample_ranks(len(result.ranks))
    fig, ax = plt.subplots(figsize=(12, max(3.0, 0.18 * len(rows) + 1.5)))
    for y, r in enumerate(rows):
        bars: dict[str, list[tuple[float, float]]] = {k: [] for k in COLORS}
        clock = 0.0
        for start, t in zip(result.starts[r], result.times[r]):
            if start > clock:
                bars["ring_wait"].append((clock, start - clock))
            bars["compute"].append((start, t.compute_s))
            if t.comm_s > 0:
                bars["comm"].append((start + t.compute_s, t.comm_s))
            clock = start + t.total_s
        rb = result.ranks[r]
        if rb.pp_bubble_s > 0:
            bars["pp_bubble"].append((clock, rb.pp_bubble_s))
            clock += rb.pp_bubble_s
        if rb.dp_bubble_s > 0:
            bars["dp_bubble"].append((clock, rb.dp_bubble_s))
            clock += rb.dp_bubble_s
        bars["grad_sync"].append((clock, result.grad_sync_s))
        for kind, spans in bars.items():
            if spans:
                ax.broken_barh(spans, (y - 0.4, 0.8), facecolors=COLORS[kind], edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([str(r) for r in rows], fontsize=6 if len(rows) > 32 else 8)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    shown = "" if len(rows) == len(result.ranks) else f" ({len(rows)} of {len(result.ranks)} ranks)"
    ax.set_ylabel("HDP rank" + shown)
    ax.set_title(title)
    ax.set_xlim(0, result.step_time_s * 1.01)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[k]) for k in COLORS]
    ax.legend(handles, [LABELS[k] for k in COLORS], loc="upper center", bbox_to_anchor=(0.5, -0.08 if len(rows) > 8 else -0.25),
              ncol=6, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def breakdown_bars(table: dict[str, dict[str, float]], path: str, title: str) -> None:
    """Stacked bars: mean seconds per rank in each category, per strategy."""
    plt = _pyplot()
    names = list(table)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(names) + 4), 4.5))
    keys = {"compute": "compute_frac", "comm": None, "grad_sync": "grad_sync_frac", "ring_wait": "ring_wait_frac",
            "pp_bubble": "pp_bubble_frac", "dp_bubble": "dp_bubble_frac"}
    bottom = [0.0] * len(names)
    for kind, key in keys.items():
        vals = []
        for n in names:
            row = table[n]
            frac = row["exposed_comm_frac"] - row["grad_sync_frac"] if key is None else row[key]
            vals.append(frac * row["step_time_s"])
        ax.bar(names, vals, bottom=bottom, color=COLORS[kind], label=LABELS[kind])
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, n in enumerate(names):
        if table[n]["speedup_vs_static"] is not None:
            ax.text(i, bottom[i], f"{table[n]['speedup_vs_static']:.2f}x", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("step time (s), mean over ranks")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(results: dict[str, StepResult], table: dict[str, dict[str, float]], directory: str, title: str) -> list[str]:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--plot: cannot create {directory!r}: {e.strerror or e}") from None
    paths = []
    for name, res in results.items():
        p = os.path.join(directory, f"gantt-{name}.png")
        gantt(res, p, f"{name}: step {res.step_time_s:.2f} s · {title}")
        paths.append(p)
    p = os.path.join(directory, "breakdown.png")
    breakdown_bars(table, p, title)
    paths.append(p)
    return paths
