"""``hdp plot``: a PNG of a length distribution, a plan, or a training run's metrics. No torch.

    hdp plot --lengths FILE --out lengths.png  (FILE: one length per line, or a store from hdp data prepare)
    hdp plot PLAN.json --out plan.png          (a hdp.plan/1 file from hdp plan --out)
    hdp plot METRICS.jsonl --out run.png       (from hdp train --metrics)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hdp.commands.plan import add_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", metavar="PLAN_OR_METRICS",
                   help="a hdp.plan/1 JSON file (hdp plan --out) or a metrics JSONL file (hdp train --metrics)")
    p.add_argument("--lengths", metavar="FILE",
                   help="draw this length distribution: a file of one length per line, or a token store directory "
                        "(hdp data prepare: its documents' lengths)")
    p.add_argument("--out", metavar="PNG", required=True, help="the picture to write (PNG, 1200 x 700)")
    p.add_argument("--title", default=None, help="title (default: the input's file name)")
    add_model_arguments(p)  # a plan is replayed under the cost model it was made with


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path!r} is not a text file; expected a plan JSON or metrics JSONL") from None


def kind_of(text: str) -> str:
    """'plan' for a hdp.plan/1 document, 'metrics' for JSONL records; ValueError otherwise."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return "metrics"  # several JSON lines do not parse as one document
    if isinstance(doc, dict) and doc.get("format") == "hdp.plan/1":
        return "plan"
    if isinstance(doc, dict) and "step" in doc:
        return "metrics"  # a single record
    raise ValueError("input is neither a hdp.plan/1 file (hdp plan --out) nor metrics JSONL (hdp train --metrics)")


def run(args: argparse.Namespace) -> int:
    if (args.input is None) == (args.lengths is None):
        raise ValueError("give exactly one input: --lengths FILE, a PLAN.json or a METRICS.jsonl")
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out {args.out!r}: the picture is a PNG; name it *.png")
    source = args.lengths or args.input
    title = args.title or os.path.basename(source)
    if args.lengths:
        from hdp.plot.lengths import draw_lengths, lengths_data, read_lengths_source

        draw_lengths(lengths_data(read_lengths_source(args.lengths)), args.out, title)
    else:
        text = _read(args.input)
        if kind_of(text) == "plan":
            _plot_plan(text, args, title)
        else:
            from hdp.plot.run import draw_run, read_metrics, run_data

            draw_run(run_data(read_metrics(args.input, text)), args.out, title)
    print(f"wrote {args.out}")
    return 0


def _plot_plan(text: str, args: argparse.Namespace, title: str) -> None:
    from hdp.plan import Plan, build_cost_model
    from hdp.plot.plan import draw_plan, plan_data

    try:
        plan = Plan.from_json(text)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{args.input}: malformed hdp.plan/1 file ({type(e).__name__}: {e})") from None
    cost = build_cost_model(args.model, args.profile, pp=plan.pipeline_stages)
    pic = plan_data(plan, cost)
    if pic.file_predicted_s and abs(pic.predicted_s / pic.file_predicted_s - 1) > 0.01:
        print(f"hdp plot: note: the plan predicts {pic.file_predicted_s:.3g} s but replays in {pic.predicted_s:.3g} s "
              f"under --model {args.model}; pass the --model/--profile it was planned with", file=sys.stderr)
    draw_plan(pic, args.out, f"{title} · {plan.strategy} · {plan.num_ranks:,} ranks · C={plan.capacity_tokens:,} · "
                             f"{cost.model.name} on {cost.device.name}")
