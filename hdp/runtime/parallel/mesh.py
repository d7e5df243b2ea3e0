"""Where each process sits in a run: HDP rank x pipeline stage x tensor-parallel rank, fixed for the run.

Only the HDP pool is dynamic (a new set of rings every step); ``--tp`` and ``--pp`` are fixed by the
model's size (ByteScale §5.1). Global rank ``g = (h * pp + s) * tp + t`` for HDP rank ``h``, stage
``s`` and TP index ``t``: the ``tp`` ranks of one stage are consecutive, so a TP group is GPUs of one
node (its per-layer collectives stay on NVLink); a pipeline's stages follow one another; then the
next HDP rank.

Every (stage, TP index) coordinate runs the same plan over its own *HDP pool* ``{(h, s, t): h}``: a
ring over HDP ranks r1..rk becomes ``tp x pp`` independent rings, one per coordinate, over the same
zig-zag pieces, with the local heads. Ring transfers stay point-to-point in the global group;
``global_rank`` turns a plan's HDP rank into the process of this coordinate. The plan itself is
made for ``hdp`` ranks, so every process still computes it alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Coord:
    """One process's place: HDP rank (the plan's rank), pipeline stage, TP index."""

    hdp: int
    stage: int
    tp: int


@dataclass(frozen=True, slots=True)
class Mesh:
    """The fixed layout of ``hdp x pp x tp`` processes (module docstring)."""

    hdp: int = 1
    tp: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        if self.hdp < 1 or self.tp < 1 or self.pp < 1:
            raise ValueError(f"--tp and --pp must be >= 1 and leave >= 1 HDP rank, got hdp {self.hdp}, "
                             f"tp {self.tp}, pp {self.pp}")

    @classmethod
    def for_world(cls, world_size: int, tp: int = 1, pp: int = 1) -> "Mesh":
        """The mesh of ``world_size`` processes; the world must be a multiple of ``tp x pp``."""
        if tp < 1 or pp < 1:
            raise ValueError(f"--tp and --pp must be >= 1, got {tp} and {pp}")
        if world_size % (tp * pp):
            raise ValueError(f"{world_size} processes are not a multiple of --tp {tp} x --pp {pp} = {tp * pp}: "
                             f"launch a multiple of {tp * pp} (HDP ranks x tp x pp)")
        return cls(world_size // (tp * pp), tp, pp)

    @property
    def world_size(self) -> int:
        return self.hdp * self.tp * self.pp

    @property
    def trivial(self) -> bool:
        """Plain HDP: every process is an HDP rank (tp = pp = 1)."""
        return self.tp == 1 and self.pp == 1

    def coord(self, rank: int) -> Coord:
        """Where global ``rank`` sits."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside a world of {self.world_size}")
        rest, t = divmod(rank, self.tp)
        h, s = divmod(rest, self.pp)
        return Coord(h, s, t)

    def rank(self, hdp: int, stage: int = 0, tp: int = 0) -> int:
        """The global rank of (HDP rank, stage, TP index)."""
        return (hdp * self.pp + stage) * self.tp + tp

    def pool(self, stage: int, tp: int) -> list[int]:
        """Global ranks of the HDP pool of coordinate (stage, tp): one per HDP rank, in HDP order."""
        return [self.rank(h, stage, tp) for h in range(self.hdp)]

    def tp_ranks(self, hdp: int, stage: int) -> list[int]:
        """Global ranks of one TP group (consecutive)."""
        return [self.rank(hdp, stage, t) for t in range(self.tp)]

    def pipeline(self, hdp: int, tp: int) -> list[int]:
        """Global ranks of one pipeline's stages, first to last."""
        return [self.rank(hdp, s, tp) for s in range(self.pp)]

    def pools(self) -> list[list[int]]:
        """Every HDP pool, in (stage, tp) order: the order every process creates their groups in."""
        return [self.pool(s, t) for s in range(self.pp) for t in range(self.tp)]

    def tp_groups(self) -> list[list[int]]:
        """Every TP group, in (hdp, stage) order."""
        return [self.tp_ranks(h, s) for h in range(self.hdp) for s in range(self.pp)]
