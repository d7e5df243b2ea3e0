"""The Plan: pure data shared by the planner, the runtime and the simulator.

Mirrors the ``hdp.plan/1`` JSON contract (docs/plan-format.md). Types are frozen and slotted;
cheap structural invariants are checked on construction, the cross-rank rules in ``validate.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hdp.plan.parts import (  # noqa: F401 - the parts are re-exported: every caller imports them from here
    PLAN_FORMAT, RING_ALGOS, MicroBatch, RankPlan, Ring, Segment, Sequence, canonical_json, fingerprint_of,
)
from hdp.plan.plan_json import plan_fields


@dataclass(frozen=True, slots=True)
class Plan:
    """One global batch: which tokens every rank processes, in which micro-batch, with which peers."""

    strategy: str
    num_ranks: int
    capacity_tokens: int
    sequences: tuple[Sequence, ...]
    rings: tuple[Ring, ...]
    ranks: tuple[RankPlan, ...]
    pipeline_stages: int = 1
    gpus_per_node: int = 0
    """HDP ranks per node (rank r is on node r // gpus_per_node); 0: topology not given."""
    predicted_step_time_s: float = 0.0
    lower_bound_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.num_ranks < 1:
            raise ValueError(f"num_ranks must be >= 1, got {self.num_ranks}")
        if len(self.ranks) != self.num_ranks or any(r.rank != i for i, r in enumerate(self.ranks)):
            raise ValueError("ranks must list every rank 0..num_ranks-1 in order")
        if any(s.id != i for i, s in enumerate(self.sequences)):
            raise ValueError("sequences[i].id must equal i")
        if any(r.id != i for i, r in enumerate(self.rings)):
            raise ValueError("rings[i].id must equal i")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")

    # -- JSON contract ---------------------------------------------------------------------------
    def to_dict(self, with_fingerprint: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": PLAN_FORMAT,
            "strategy": self.strategy,
            "num_ranks": self.num_ranks,
            "pipeline_stages": self.pipeline_stages,
            "capacity_tokens": self.capacity_tokens,
            "sequences": [{"id": s.id, "length": s.length} for s in self.sequences],
            "rings": [{"id": r.id, "seq": r.seq, "ranks": list(r.ranks), **({"algo": r.algo} if r.algo != "flat" else {})}
                      for r in self.rings],
            "ranks": [
                {
                    "rank": rp.rank,
                    "micro_batches": [
                        {
                            "segments": [
                                {"seq": s.seq, "start": s.start, "end": s.end} for s in mb.segments
                            ],
                            "rings": list(mb.rings),
                            "offload_ratio": mb.offload_ratio,
                            "token_limit": mb.token_limit,
                            **({"offload_layers": mb.offload_layers} if mb.offload_layers else {}),
                        }
                        for mb in rp.micro_batches
                    ],
                }
                for rp in self.ranks
            ],
            "predicted_step_time_s": self.predicted_step_time_s,
            "lower_bound_s": self.lower_bound_s,
        }
        if self.gpus_per_node:
            d["gpus_per_node"] = self.gpus_per_node
        d.update(self.extra)
        if with_fingerprint:
            d["fingerprint"] = fingerprint_of(d)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        """The plan ``d`` describes; any malformed field is a ``ValueError`` naming it (hdp.plan.plan_json)."""
        plan = cls(**plan_fields(d))
        if "fingerprint" in d and d["fingerprint"] != plan.fingerprint:
            raise ValueError("plan fingerprint does not match its contents: the file is corrupt or was edited")
        return plan

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.to_dict(with_fingerprint=False))

    # -- conveniences for readers -----------------------------------------------------------------
    @property
    def total_tokens(self) -> int:
        return sum(s.length for s in self.sequences)

    def ring_sizes(self) -> dict[int, int]:
        """Ring size -> number of rings of that size."""
        out: dict[int, int] = {}
        for r in self.rings:
            out[r.size] = out.get(r.size, 0) + 1
        return dict(sorted(out.items()))

    @property
    def max_ring(self) -> int:
        return max((r.size for r in self.rings), default=1)
