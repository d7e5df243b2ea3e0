"""A plan as ranks x time: micro-batches coloured by sequence, rings marked, each rank's predicted
finish and the batch's lower bound.

Times come from replaying the plan under the cost model (``hdp.plan.estimate``): a ring micro-batch
starts when its last member is ready, exactly as the planner predicted the step. Up to
``MAX_ROWS`` ranks each get a row; beyond that, rows are groups of consecutive ranks and the
picture shows, per group and time bin, the share of rank-time in ring micro-batches, in
whole-sequence micro-batches and idle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hdp.plan.cost.cost_model import CostModel
from hdp.plan.estimate import micro_batch_time, time_bound
from hdp.plan.replay import replay
from hdp.plan.types import Plan

MAX_ROWS = 64
TIME_BINS = 240
RING_RGB, WHOLE_RGB, IDLE_RGB = (0.77, 0.31, 0.32), (0.30, 0.45, 0.69), (1.0, 1.0, 1.0)


@dataclass(frozen=True, slots=True)
class Bar:
    """One sequence's share of one micro-batch on one row."""

    row: int
    start: float
    width: float
    seq: int
    ring: int | None
    """The ring id when this is a ring member's piece of a split sequence."""


@dataclass(frozen=True, slots=True)
class PlanPicture:
    num_ranks: int
    ranks_per_row: int
    """1: a row per rank, bars drawn; > 1: rows are groups of ranks, shares drawn."""
    row_labels: tuple[str, ...]
    bars: tuple[Bar, ...]
    ring_share: tuple[tuple[float, ...], ...]
    """Aggregated view only: per row and time bin, the share of rank-time in ring micro-batches."""
    whole_share: tuple[tuple[float, ...], ...]
    finish: tuple[float, ...]
    """Predicted finish of each row (its latest rank)."""
    predicted_s: float
    lower_bound_s: float
    file_predicted_s: float
    """What the plan file says; differs from predicted_s when replayed under another cost model."""
    ring_boxes: tuple[tuple[int, int, int, int, float, float], ...] = ()
    """Aggregated view only: (ring id, size, first row, last row, start, end) of the largest rings
    whose members sit in consecutive rows, outlined so rings stay visible."""


def _segment_weights(plan: Plan, mb, cost: CostModel) -> list[tuple[int, int | None, float]]:
    """(seq, ring id, cost-model time) of each sequence in the micro-batch: how its bar is divided.

    A ring member's two zig-zag pieces are one share (its ring time), as in ``micro_batch_time``."""
    ring_of = {plan.rings[g].seq: g for g in mb.rings}
    out, seen = [], set()
    for s in mb.segments:
        g = ring_of.get(s.seq)
        if g is not None:
            if s.seq in seen:
                continue
            seen.add(s.seq)
            out.append((s.seq, g, cost.seq_time(plan.sequences[s.seq].length, plan.rings[g].size)))
        else:
            out.append((s.seq, None, cost.seq_time(s.num_tokens)))
    return out


def plan_data(plan: Plan, cost: CostModel, max_rows: int = MAX_ROWS) -> PlanPicture:
    times = [[micro_batch_time(plan, mb, cost) for mb in rp.micro_batches] for rp in plan.ranks]
    rep = replay(plan, times)
    bubble = [(plan.pipeline_stages - 1) * max(t, default=0.0) for t in times]
    finish_rank = [f + b for f, b in zip(rep.finish, bubble)]
    predicted = max(finish_rank, default=0.0)
    bound = time_bound([s.length for s in plan.sequences], plan.num_ranks, plan.capacity_tokens, cost)
    n = plan.num_ranks
    per = 1 if n <= max_rows else math.ceil(n / max_rows)
    rows = math.ceil(n / per)
    finish = tuple(max(finish_rank[r * per:(r + 1) * per]) for r in range(rows))
    if per == 1:
        bars = []
        for r, rp in enumerate(plan.ranks):
            for mb, start, dur in zip(rp.micro_batches, rep.starts[r], times[r]):
                weights = _segment_weights(plan, mb, cost)
                total = sum(w for *_, w in weights) or 1.0
                x = start
                for seq, ring, w in weights:
                    width = dur * w / total
                    bars.append(Bar(r, x, width, seq, ring))
                    x += width
        return PlanPicture(n, 1, tuple(str(r) for r in range(n)), tuple(bars), (), (), finish, predicted, bound,
                           plan.predicted_step_time_s)
    span = max(predicted, bound) or 1.0
    dt = span / TIME_BINS
    ring = [[0.0] * TIME_BINS for _ in range(rows)]
    whole = [[0.0] * TIME_BINS for _ in range(rows)]
    spans: dict[int, tuple[float, float, set[int]]] = {}
    for r, rp in enumerate(plan.ranks):
        for mb, start, dur in zip(rp.micro_batches, rep.starts[r], times[r]):
            target = ring[r // per] if mb.rings else whole[r // per]
            _spread(target, start, start + dur, dt)
            for g in mb.rings:
                lo, hi, members = spans.setdefault(g, (start, start + dur, set()))
                spans[g] = (min(lo, start), max(hi, start + dur), members | {r // per})
    boxes = []
    for g in sorted(spans, key=lambda g: -plan.rings[g].size):
        lo, hi, members = spans[g]
        if plan.rings[g].size >= 2 * per and max(members) - min(members) + 1 == len(members) and len(boxes) < 40:
            boxes.append((g, plan.rings[g].size, min(members), max(members), lo, hi))
    sizes = [min(per, n - i * per) for i in range(rows)]
    norm = [tuple(v / (dt * sizes[i]) for v in row) for i, row in enumerate(ring)]
    norm_w = [tuple(v / (dt * sizes[i]) for v in row) for i, row in enumerate(whole)]
    labels = tuple(f"{i * per}–{i * per + sizes[i] - 1}" for i in range(rows))
    return PlanPicture(n, per, labels, (), tuple(norm), tuple(norm_w), finish, predicted, bound, plan.predicted_step_time_s,
                       tuple(boxes))


def _spread(row: list[float], start: float, end: float, dt: float) -> None:
    """Add the interval [start, end) to the time bins of ``row`` (seconds of overlap per bin)."""
    b = int(start // dt)
    while b < len(row) and b * dt < end:
        row[b] += max(0.0, min(end, (b + 1) * dt) - max(start, b * dt))
        b += 1


def draw_plan(pic: PlanPicture, path: str, title: str) -> None:
    from hdp.plot.png import new_figure, pyplot, save_png

    plt = pyplot()
    fig, ax = new_figure(1)
    rows = len(pic.row_labels)
    span = max(pic.predicted_s, pic.lower_bound_s) or 1.0
    handles, names = [], []
    if pic.ranks_per_row == 1:
        cmap = plt.get_cmap("tab20")
        for bar in pic.bars:
            ax.broken_barh([(bar.start, bar.width)], (bar.row - 0.4, 0.8), facecolors=cmap(bar.seq % 20),
                           edgecolor="black" if bar.ring is not None else "white",
                           linewidth=0.8 if bar.ring is not None else 0.3, hatch="//" if bar.ring is not None else None)
            if bar.ring is not None and bar.width > 0.06 * span and rows <= 32:
                ax.text(bar.start + bar.width / 2, bar.row, f"ring {bar.ring}", ha="center", va="center", fontsize=7)
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="#dddddd", edgecolor="black", hatch="//"))
        names.append("ring member's piece (colour = sequence)")
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=cmap(0), edgecolor="white"))
        names.append("whole sequence (colour = sequence)")
        ax.set_ylabel("HDP rank")
    else:
        image = [[_mix(rs, ws) for rs, ws in zip(rr, wr)] for rr, wr in zip(pic.ring_share, pic.whole_share)]
        ax.imshow(image, aspect="auto", interpolation="nearest", extent=(0, span, rows - 0.5, -0.5))
        for rgb, label in ((RING_RGB, "ring micro-batches"), (WHOLE_RGB, "whole-sequence micro-batches"),
                           ((0.9, 0.9, 0.9), "idle")):
            handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=rgb, edgecolor="#999999"))
            names.append(label)
        for g, size, r0, r1, t0, t1 in pic.ring_boxes:
            ax.add_patch(plt.Rectangle((t0, r0 - 0.5), t1 - t0, r1 - r0 + 1, fill=False, edgecolor="black", linewidth=0.8))
            if t1 - t0 > 0.08 * span and r1 - r0 >= 1:
                ax.text((t0 + t1) / 2, (r0 + r1) / 2, f"ring {g}: {size} ranks", ha="center", va="center", fontsize=7)
        if pic.ring_boxes:
            handles.append(plt.Rectangle((0, 0), 1, 1, fill=False, edgecolor="black"))
            names.append("a ring's ranks and time")
        ax.set_ylabel(f"HDP ranks, {pic.ranks_per_row} per row (share of rank-time)")
    ax.scatter(pic.finish, range(rows), marker="|", s=120 if rows <= 32 else 40, color="black", zorder=3)
    handles.append(ax.collections[-1])
    names.append("predicted finish of the rank" + ("" if pic.ranks_per_row == 1 else "s (latest)"))
    if rows <= 16:
        for r, f in enumerate(pic.finish):
            ax.text(f + 0.005 * span, r, f" {f:.3g} s", va="center", fontsize=7)
    handles.append(ax.axvline(pic.lower_bound_s, color="#C44E52", linestyle="--", linewidth=1.5))
    names.append(f"lower bound {pic.lower_bound_s:.3g} s")
    handles.append(ax.axvline(pic.predicted_s, color="black", linestyle=":", linewidth=1.5))
    names.append(f"predicted step {pic.predicted_s:.3g} s")
    step = max(1, math.ceil(rows / 32))
    ax.set_yticks(range(0, rows, step))
    ax.set_yticklabels(pic.row_labels[::step], fontsize=8 if rows <= 32 else 6)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xlim(0, span * 1.08)
    ax.set_xlabel("predicted time (s, cost model)")
    ax.set_title(title)
    ax.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    save_png(fig, path)


def _mix(ring_share: float, whole_share: float) -> tuple[float, float, float]:
    idle = max(0.0, 1.0 - ring_share - whole_share)
    return tuple(min(1.0, ring_share * a + whole_share * b + idle * c * 0.9)  # type: ignore[return-value]
                 for a, b, c in zip(RING_RGB, WHOLE_RGB, IDLE_RGB))
