"""Read a ``hdp.plan/1`` dict into the fields of a ``Plan``, checking every field's type on the way.

A plan file comes from outside (another planner, an edit, a truncated copy). Any malformed input
must become one ``ValueError`` naming the field (``ranks[2].micro_batches[0].segments[1].start``),
never a ``KeyError`` or ``TypeError`` from deep inside; the fuzz test in tests/plan holds us to it.
"""

from __future__ import annotations

import math
from typing import Any

from hdp.plan.parts import PLAN_FORMAT, MicroBatch, RankPlan, Ring, Segment, Sequence

KNOWN = {"format", "strategy", "num_ranks", "pipeline_stages", "capacity_tokens", "sequences", "rings", "ranks",
         "predicted_step_time_s", "lower_bound_s", "fingerprint", "gpus_per_node"}


def _malformed(where: str, what: str, value: Any) -> ValueError:
    shown = repr(value)
    return ValueError(f"malformed {PLAN_FORMAT} file: {where} must be {what}, got {shown[:60]}")


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(where, "an object", value)
    return value


def _get(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ValueError(f"malformed {PLAN_FORMAT} file: {where} has no field {key!r}")
    return d[key]


def _int(d: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = _get(d, key, where) if default is None or key in d else default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _malformed(f"{where}.{key}", "an integer", value)
    return value


def _float(d: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = _get(d, key, where) if default is None or key in d else default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _malformed(f"{where}.{key}", "a finite number", value)
    return float(value)


def _list(d: dict[str, Any], key: str, where: str) -> list[Any]:
    value = _get(d, key, where)
    if not isinstance(value, list):
        raise _malformed(f"{where}.{key}", "a list", value)
    return value


def _ints(d: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    items = _list(d, key, where)
    if any(isinstance(x, bool) or not isinstance(x, int) for x in items):
        raise _malformed(f"{where}.{key}", "a list of integers", items)
    return tuple(items)


def _micro_batch(d: Any, where: str) -> MicroBatch:
    d = _obj(d, where)
    segments = []
    for i, s in enumerate(_list(d, "segments", where)):
        w = f"{where}.segments[{i}]"
        s = _obj(s, w)
        segments.append(Segment.checked(_int(s, "seq", w), _int(s, "start", w), _int(s, "end", w)))
    return MicroBatch(segments=tuple(segments), rings=_ints(d, "rings", where),
                      offload_ratio=_float(d, "offload_ratio", where), token_limit=_int(d, "token_limit", where),
                      offload_layers=_int(d, "offload_layers", where, default=0))


def plan_fields(d: Any) -> dict[str, Any]:
    """``Plan(**plan_fields(d))`` is the plan ``d`` describes; ``ValueError`` naming the field for anything
    malformed (``Plan.from_dict`` also checks the fingerprint)."""
    d = _obj(d, "the plan")
    if d.get("format") != PLAN_FORMAT:
        raise ValueError(f"not an {PLAN_FORMAT} plan (format={d.get('format')!r})")
    strategy = _get(d, "strategy", "the plan")
    if not isinstance(strategy, str):
        raise _malformed("strategy", "a string", strategy)
    sequences = []
    for i, s in enumerate(_list(d, "sequences", "the plan")):
        s = _obj(s, f"sequences[{i}]")
        sequences.append(Sequence(_int(s, "id", f"sequences[{i}]"), _int(s, "length", f"sequences[{i}]")))
    rings = []
    for i, r in enumerate(_list(d, "rings", "the plan")):
        w = f"rings[{i}]"
        r = _obj(r, w)
        algo = r.get("algo", "flat")
        if not isinstance(algo, str):
            raise _malformed(f"{w}.algo", "a string", algo)
        rings.append(Ring(_int(r, "id", w), _int(r, "seq", w), _ints(r, "ranks", w), algo))
    ranks = []
    for i, rp in enumerate(_list(d, "ranks", "the plan")):
        w = f"ranks[{i}]"
        rp = _obj(rp, w)
        mbs = tuple(_micro_batch(mb, f"{w}.micro_batches[{m}]") for m, mb in enumerate(_list(rp, "micro_batches", w)))
        ranks.append(RankPlan(_int(rp, "rank", w), mbs))
    return dict(
        strategy=strategy, num_ranks=_int(d, "num_ranks", "the plan"),
        capacity_tokens=_int(d, "capacity_tokens", "the plan"),
        pipeline_stages=_int(d, "pipeline_stages", "the plan", default=1),
        gpus_per_node=_int(d, "gpus_per_node", "the plan", default=0),
        sequences=tuple(sequences), rings=tuple(rings), ranks=tuple(ranks),
        predicted_step_time_s=_float(d, "predicted_step_time_s", "the plan", default=0.0),
        lower_bound_s=_float(d, "lower_bound_s", "the plan", default=0.0),
        extra={k: v for k, v in d.items() if k not in KNOWN},
    )
