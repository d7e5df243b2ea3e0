"""Which tensor of a checkpoint a process writes and reads, with ``--tp``/``--pp``.

Each (stage, TP index) coordinate holds its own shard of the model: its flat buffers are another
tensor than any other coordinate's, so they are saved under keys of their own (``stage{s}.tp{t}.master``),
each a 1-D ``Shard(0)`` DTensor over that coordinate's HDP pool. A resume with the same T and P but
another number of HDP ranks reads the same keys, resharded by DCP over the new pool. Plain HDP
(tp = pp = 1) keeps the keys of before (``master``) over a mesh of all ranks: old checkpoints resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hdp.runtime.parallel.mesh import Coord, Mesh


@dataclass(frozen=True, slots=True)
class Shard:
    """This process's part of a checkpoint: its key prefix and its place in the pool its buffers are cut over."""

    prefix: str
    """``""`` (plain HDP) or ``"stage{s}.tp{t}."``."""
    rank: int
    """Index in the pool (the HDP rank; the global rank for plain HDP)."""
    size: int
    """Ranks in the pool (HDP ranks; the world for plain HDP)."""

    @property
    def name(self) -> str:
        """The coordinate's name in the manifest's ``layout``/``numel`` maps (``""`` for plain HDP)."""
        return self.prefix.rstrip(".")

    def key(self, state: str) -> str:
        return self.prefix + state

    def chunk(self, numel: int) -> tuple[int, int]:
        """This rank's slice of ``[0, numel)`` under Shard(0): torch.chunk's rule, the zero-1 shard."""
        size = -(-numel // self.size)
        lo = min(numel, self.rank * size)
        return lo, min(numel, lo + size)


def shard_of(mesh: Mesh, coord: Coord, rank: int) -> Shard:
    """The checkpoint shard of global ``rank`` at ``coord`` of ``mesh``."""
    if mesh.trivial:
        return Shard("", rank, mesh.world_size)
    return Shard(f"stage{coord.stage}.tp{coord.tp}.", coord.hdp, mesh.hdp)


def saved_for(manifest: dict[str, Any], field: str, shard: Shard) -> Any:
    """The manifest's ``field`` (``layout``, ``numel``) of ``shard``'s coordinate: one value for plain HDP,
    a map by coordinate name with ``--tp``/``--pp`` (None where the coordinate is missing)."""
    value = manifest.get(field)
    if isinstance(value, dict):
        return value.get(shard.name)
    return value if not shard.name else None
