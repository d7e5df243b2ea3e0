"""A training run from ``hdp train --metrics`` JSONL: loss, tokens/s and MFU over steps."""

from __future__ import annotations

import json
from dataclasses import dataclass

REQUIRED = ("step", "loss", "tokens_per_s")


@dataclass(frozen=True, slots=True)
class RunPicture:
    steps: tuple[int, ...]
    loss: tuple[float, ...]
    tokens_per_s: tuple[float, ...]
    mfu: tuple[float, ...] | None
    """None when the metrics predate honest MFU (no ``mfu`` key)."""


def read_metrics(path: str, text: str) -> list[dict]:
    records = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{no}: not a JSON object; expected hdp train --metrics JSONL") from None
        if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
            raise ValueError(f"{path}:{no}: a metrics record needs {', '.join(REQUIRED)} (hdp train --metrics)")
        records.append(rec)
    if not records:
        raise ValueError(f"{path}: no metrics records; run hdp train --metrics FILE first")
    return records


def run_data(records: list[dict]) -> RunPicture:
    has_mfu = all("mfu" in r for r in records)
    return RunPicture(tuple(int(r["step"]) for r in records), tuple(float(r["loss"]) for r in records),
                      tuple(float(r["tokens_per_s"]) for r in records),
                      tuple(float(r["mfu"]) for r in records) if has_mfu else None)


def draw_run(pic: RunPicture, path: str, title: str) -> None:
    from hdp.plot.png import new_figure, save_png

    fig, (a, b, c) = new_figure(3)
    a.plot(pic.steps, pic.loss, color="#4C72B0", marker="o" if len(pic.steps) <= 50 else None, label="loss")
    a.set_ylabel("loss (nats/token)")
    a.set_title(f"{title}: {len(pic.steps)} steps")
    b.plot(pic.steps, pic.tokens_per_s, color="#55A868", marker="o" if len(pic.steps) <= 50 else None, label="tokens/s")
    b.set_ylabel("tokens/s")
    if pic.mfu is not None:
        c.plot(pic.steps, [100 * m for m in pic.mfu], color="#C44E52", marker="o" if len(pic.steps) <= 50 else None,
               label="MFU")
        c.set_ylim(bottom=0)
    else:
        c.text(0.5, 0.5, "no mfu in these metrics", ha="center", va="center", transform=c.transAxes)
    c.set_ylabel("MFU (%)")
    c.set_xlabel("step")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="upper right", frameon=False)
    fig.tight_layout()
    save_png(fig, path)
