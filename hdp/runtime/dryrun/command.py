"""``hdp train --dry-run --world-size N``: plan one step, record every rank, match, report; exit 1 on a mismatch."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, replace

from hdp.data.synthetic import sample_lengths
from hdp.plan.cost.model_config import get_model
from hdp.runtime.config import TrainConfig
from hdp.runtime.dryrun.drive import Recorded, SyntheticBatch, record_step
from hdp.runtime.dryrun.match import Match, match
from hdp.runtime.dryrun.memory import tracked_peak
from hdp.runtime.dryrun.record import Op
from hdp.runtime.dryrun.report import print_table, rank_figures, templates_summary
from hdp.runtime.dryrun.rings import Templates
from hdp.runtime.train.run import Run

DEFAULT_TOKENS = 2**21
"""The dry run's synthetic batch: 2M tokens (a Byted-like global batch)."""
DEFAULT_MAX_LEN = 2**18


@dataclass(frozen=True)
class _Corpus:
    doc_lengths: list[int]


@dataclass(frozen=True)
class _Stream:
    """``BatchStream``'s interface over one synthetic batch (every step is that batch)."""

    one: SyntheticBatch

    @property
    def corpus(self) -> _Corpus:
        return _Corpus(self.one.lengths)

    def batch(self, step: int) -> SyntheticBatch:
        return self.one


def check_templates(templates: Templates) -> Match:
    """Each templated ring shape's protocol, op by op, over its k members (sizes compared symbolically)."""
    errors: list[str] = []
    for shape in sorted({s for s, _, _ in templates.ops}, key=repr):
        family = templates.family(shape)
        label = f"ring shape {shape.algo} x{shape.size}"
        if family is None:
            errors.append(f"{label}: not every member's forward and backward was recorded")
            continue
        world = max(shape.size, max((max(t.group) + 1 for ops in family.values() for t in ops if t.group), default=0))
        sizes: dict[tuple[str, int], str] = {}  # the symbolic size label of (dtype, member), made once
        for direction in ("forward", "backward"):
            seqs = []
            for p in range(shape.size):
                where = f"{label} {direction}, position {p}"
                seqs.append([Op(t.kind, peer=t.peer, group=t.group, numel=t.per_token, tag=t.tag, ref=t.ref,
                                dtype=(sizes.get((t.dtype, t.member)) or sizes.setdefault(
                                    (t.dtype, t.member), f"{t.dtype}, member {t.member}'s tokens"))
                                if t.member >= 0 else "", where=where)
                             for t in family[(p, direction)]])
            errors += match(seqs, world, label=f"{label} {direction}").errors
    return Match(not errors, errors)


def dry_run(config: TrainConfig, world_size: int, *, lengths: list[int] | None = None, tokens: int = DEFAULT_TOKENS,
            dist_name: str = "byted", layers: int | None = 1, full: bool = False, templated: bool | None = None,
            as_json: bool = False, measure_memory: bool = False) -> int:
    """Run the dry run; prints the table (or one JSON object) and returns the exit code (0, or 1: mismatch).

    ``measure_memory``: the worst rank by peak memory runs once more with the full model under torch's
    ``MemTracker`` (``memory``); its ``tracked_peak_bytes`` stand beside ``peak_memory_bytes``.
    """
    if world_size < 1:
        raise ValueError(f"--world-size must be >= 1, got {world_size}")
    started = time.perf_counter()
    if config.data is None:
        lengths = lengths if lengths is not None else sample_lengths(dist_name, tokens, config.max_seq_len, config.seed)
        batch = SyntheticBatch(lengths)
        from hdp.plan import build_cost_model
        from hdp.runtime.model.source import model_shape

        run = Run(config, _Stream(batch), build_cost_model(model_shape(config), recompute=config.recompute,  # type: ignore[arg-type]
                                                           dtype=config.dtype))
    else:
        run = Run.from_config(replace(config, capacity=config.capacity or 1), world_size)
        run = replace(run, config=config)
        batch = run.stream.batch(0)
    # Memory is checked against the modelled device (the cost model's profile), not this machine.
    cost = dataclasses.replace(run.cost, zero=config.zero_for(world_size))
    if config.capacity is None:  # the planner's memory-derived capacity, as ``hdp plan`` uses
        run = replace(run, config=replace(config, capacity=cost.derived_capacity(world_size)))
    assert run.config.capacity is not None
    cost.check_fits(world_size, run.config.capacity)
    plan = run.plan(0, world_size)
    gpn = run.gpus_per_node(plan, world_size)
    rec: Recorded = record_step(run.config, plan, batch, world_size, layers=layers, full=full, templated=templated)
    result = match(rec.ops, world_size)
    proto = check_templates(rec.templates)
    errors = proto.errors + result.errors
    num_layers = get_model(config.model).num_layers
    ranks = rank_figures(rec, dataclasses.replace(run.cost, zero=config.zero_for(world_size)), gpn, num_layers)
    tracked: dict[str, int] | None = None
    if measure_memory and ranks:
        worst = max(ranks, key=lambda r: (r["peak_memory_bytes"], -r["rank"]))
        tracked = tracked_peak(run.config, plan, batch, world_size, worst["rank"])
        worst["tracked_peak_bytes"] = tracked["Total"]
    out = {"matched": not errors, "errors": errors, "world_size": world_size, "strategy": config.strategy,
           "model": config.model, "gpus_per_node": gpn, "capacity": run.config.capacity, "tokens": sum(batch.lengths),
           "sequences": len(batch.lengths), "rings": len(plan.rings), "layers_run": rec.layers_run,
           "num_layers": num_layers, **templates_summary(rec.templates), "record_s": rec.wall_s,
           **({"tracked_memory": tracked} if tracked is not None else {}),
           "wall_s": time.perf_counter() - started, "ranks": ranks}
    if as_json:
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    else:
        verdict = "matched" if not errors else f"{len(errors)} error(s)"
        print_table(ranks, f"hdp train --dry-run: {world_size:,} ranks, {config.model}, {config.strategy}, "
                           f"{len(plan.rings)} rings: {verdict} in {out['wall_s']:.1f} s", errors)
    return 0 if not errors else 1
