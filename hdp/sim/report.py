"""Per-strategy figures from simulated steps: step time, speedup, MFU, breakdown, gap to the bound."""

from __future__ import annotations

from hdp.sim.training_step import StepResult

CATEGORIES = ("compute", "comm", "grad_sync", "ring_wait", "pp_bubble", "dp_bubble")


def summarise(results: list[StepResult], gpus: int, peak_tflops: float, planning_time_s: float,
              max_ring: int, num_rings: int) -> dict[str, float]:
    """Means over steps; fractions are of rank-seconds (they sum to 1)."""
    n = len(results)
    step = sum(r.step_time_s for r in results) / n
    totals = dict.fromkeys(CATEGORIES, 0.0)
    rank_seconds = 0.0
    for r in results:
        for k, v in r.totals().items():
            totals[k] += v
        rank_seconds += len(r.ranks) * r.step_time_s
    frac = {k: v / rank_seconds for k, v in totals.items()}
    flops = sum(r.model_flops for r in results) / n
    tflops = flops / (step * gpus) / 1e12
    bound = sum(r.lower_bound_s for r in results) / n
    floor = sum(r.area_floor_s for r in results) / n
    by_algo: dict[str, float] = {}
    by_size: dict[str, float] = {}
    for r in results:
        for ts in r.times:
            for t in ts:
                for algo, k, s in t.ring_by:
                    by_algo[algo] = by_algo.get(algo, 0.0) + s
                    by_size[str(k)] = by_size.get(str(k), 0.0) + s
    per_rank = n * max(len(results[0].ranks), 1)  # mean per rank per step
    return {
        "step_time_s": step,
        "tokens_per_s": sum(r.tokens for r in results) / n / step,
        "model_tflops_per_gpu": tflops,
        "mfu": tflops / peak_tflops,
        "compute_frac": frac["compute"],
        "exposed_comm_frac": frac["comm"] + frac["grad_sync"],
        "grad_sync_frac": frac["grad_sync"],
        "idle_frac": frac["ring_wait"] + frac["pp_bubble"] + frac["dp_bubble"],
        "ring_wait_frac": frac["ring_wait"],
        "pp_bubble_frac": frac["pp_bubble"],
        "dp_bubble_frac": frac["dp_bubble"],
        "grad_sync_s": sum(r.grad_sync_s for r in results) / n,
        "lower_bound_s": bound,
        "gap_to_lower_bound": step / bound if bound else 1.0,
        "area_floor_s": floor,
        "gap_to_area_floor": step / floor if floor else 1.0,
        "planning_time_s": planning_time_s,
        "max_ring": max_ring,
        "rings": num_rings,
        "exposed_comm_s": {a: s / per_rank for a, s in sorted(by_algo.items())},
        "exposed_comm_s_by_ring_size": {k: s / per_rank for k, s in sorted(by_size.items(), key=lambda x: int(x[0]))},
    }


def add_speedups(table: dict[str, dict[str, float]], static_flat: dict[str, float] | None = None) -> None:
    """Speedup over the static baseline (same ring algorithm); None when static is not in the table.
    With ``static_flat`` (static with flat rings), also ``speedup_vs_flat_static``."""
    base = table.get("static", {}).get("step_time_s")
    flat = static_flat["step_time_s"] if static_flat else None
    for row in table.values():
        row["speedup_vs_static"] = base / row["step_time_s"] if base else None  # type: ignore[assignment]
        if flat:
            row["speedup_vs_flat_static"] = flat / row["step_time_s"]


def format_table(table: dict[str, dict[str, float]], title: str, noise: bool = False) -> str:
    """Plain-text table (stable for tests and logs); ``noise``: the mean and worst step over noise seeds too."""
    head = (f"{'strategy':<12} {'step s':>9} {'speedup':>8} {'TFLOP/s':>8} {'MFU':>6} {'compute':>8} "
            f"{'comm':>6} {'idle':>6} {'LB s':>9} {'gap':>6} {'max ring':>8}")
    flat = any("speedup_vs_flat_static" in r for r in table.values())
    if flat:
        head += f" {'vs flat':>8}"
    if noise:
        head += f" {'mean s':>9} {'worst s':>9} {'seeds':>5}"
    lines = [title, head, "-" * len(head)]
    for name, r in table.items():
        sp = r["speedup_vs_static"]
        speedup = f"{sp:>7.2f}x" if sp is not None else f"{'n/a':>8}"
        vs_flat = f" {r['speedup_vs_flat_static']:>7.2f}x" if flat else ""
        lines.append(
            f"{name:<12} {r['step_time_s']:>9.3f} {speedup} {r['model_tflops_per_gpu']:>8.3g} "
            f"{r['mfu']:>6.1%} {r['compute_frac']:>8.1%} {r['exposed_comm_frac']:>6.1%} {r['idle_frac']:>6.1%} "
            f"{r['lower_bound_s']:>9.3f} {r['gap_to_lower_bound']:>5.2f}x {int(r['max_ring']):>8}{vs_flat}"
            + (f" {r['step_time_mean_s']:>9.3f} {r['step_time_worst_s']:>9.3f} {int(r['noise_seeds']):>5}" if noise else ""))
    exposed = {n: r["exposed_comm_s"] for n, r in table.items() if r.get("exposed_comm_s")}
    if exposed:
        lines.append("exposed ring comm per rank (s), by ring algorithm: " + "; ".join(
            f"{n} " + ", ".join(f"{a} {s:.3f}" for a, s in e.items()) for n, e in exposed.items()))
    return "\n".join(lines)
