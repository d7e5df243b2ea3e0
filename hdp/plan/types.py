"""The Plan: pure data shared by the planner, the runtime and the simulator.

Mirrors the ``hdp.plan/1`` JSON contract (docs/plan-format.md). Types are frozen and slotted;
cheap structural invariants are checked on construction, the cross-rank rules in ``validate.py``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

PLAN_FORMAT = "hdp.plan/1"
RING_ALGOS = ("flat", "two-level", "bidirectional")
"""How a ring moves K/V (docs/plan-format.md, fields hdp adds): ``flat`` one ring over all members;
``two-level`` an inner ring per node and parallel outer rings across nodes; ``bidirectional`` half the
KV heads rotate each way."""


@dataclass(frozen=True, slots=True)
class Sequence:
    """One sequence of the global batch; ``id`` is its index in the order the lengths were given."""

    id: int
    length: int

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"sequence {self.id} has length {self.length}; lengths must be >= 1")


@dataclass(frozen=True, slots=True)
class Segment:
    """Tokens ``[start, end)`` of sequence ``seq``."""

    seq: int
    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"segment of sequence {self.seq} has bad bounds [{self.start}, {self.end})")

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Ring:
    """A sequence split over ``len(ranks)`` ranks; ``ranks[i]`` holds zig-zag pieces i and 2k-1-i."""

    id: int
    seq: int
    ranks: tuple[int, ...]
    algo: str = "flat"
    """One of ``RING_ALGOS``; plans without the field mean ``flat``."""

    def __post_init__(self) -> None:
        if len(self.ranks) < 2 or len(set(self.ranks)) != len(self.ranks):
            raise ValueError(f"ring {self.id} needs >= 2 distinct ranks, got {list(self.ranks)}")
        if self.algo not in RING_ALGOS:
            raise ValueError(f"ring {self.id} has algo {self.algo!r}; expected one of {', '.join(RING_ALGOS)}")

    @property
    def size(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True, slots=True)
class MicroBatch:
    """What one rank processes in one forward/backward pass."""

    segments: tuple[Segment, ...]
    rings: tuple[int, ...] = ()
    offload_ratio: float = 0.0
    token_limit: int = 0
    offload_layers: int = 0
    """How many layers keep their saved activations on the host (which ones:
    ``hdp.plan.sharding.offloaded_layers``); the truth when > 0, ``offload_ratio`` its share of the
    offloadable layers."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.offload_ratio <= 1.0:
            raise ValueError(f"offload_ratio {self.offload_ratio} is outside [0, 1]")
        if self.offload_layers < 0:
            raise ValueError(f"offload_layers {self.offload_layers} is negative")

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.segments)


@dataclass(frozen=True, slots=True)
class RankPlan:
    rank: int
    micro_batches: tuple[MicroBatch, ...] = ()


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
        from hdp.plan.plan_json import plan_from_dict

        return plan_from_dict(d)

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


def canonical_json(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def fingerprint_of(d: dict[str, Any]) -> str:
    body = {k: v for k, v in d.items() if k != "fingerprint"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()
