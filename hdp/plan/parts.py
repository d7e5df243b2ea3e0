"""The parts of a Plan: sequences, segments, rings, micro-batches, one rank's plan; and the
canonical JSON and fingerprint every plan file is checked by.

Pure data, no dependency inside hdp, so the reader (``plan_json``) and the ``Plan`` itself
(``types``) can both build on it without importing each other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

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


class Segment(NamedTuple):
    """Tokens ``[start, end)`` of sequence ``seq``.

    A named tuple, not a checked dataclass: a static mesh's plan holds millions of segments and a
    tuple is built several times faster. The planner makes only valid ones; ``checked`` validates
    segments read from outside (``plan_json``), and ``validate`` checks every plan's bounds."""

    seq: int
    start: int
    end: int

    @classmethod
    def checked(cls, seq: int, start: int, end: int) -> "Segment":
        if not 0 <= start < end:
            raise ValueError(f"segment of sequence {seq} has bad bounds [{start}, {end})")
        return cls(seq, start, end)

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
    ``hdp.plan.schedule.sharding.offloaded_layers``); the truth when > 0, ``offload_ratio`` its share of the
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


def canonical_json(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def fingerprint_of(d: dict[str, Any]) -> str:
    body = {k: v for k, v in d.items() if k != "fingerprint"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()
