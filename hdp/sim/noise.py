"""Seeded kernel-time noise and stragglers: what a real cluster adds to the model's clean times.

* Jitter J: every kernel's time is multiplied by an independent lognormal factor
  ``exp(J z - J^2 / 2)``, z standard normal: **mean-preserving** (E = 1; the median is
  ``exp(-J^2/2)``, 0.995 at J = 0.1), so noise alone does not make a rank slower on average, only
  the waits for the slowest do. The kernels: each micro-batch's compute on each rank (GEMMs, whole
  sequences, overhead: one draw), and every ring step of every layer, forward and backward.
* A ring step waits for its slowest member: its time is the step's block time times the largest
  factor among the members. The maximum of n independent lognormals is drawn exactly from one
  uniform u: ``z_max = Phi^-1(u^(1/n))``, so a step costs one draw, not one per member.
* Stragglers F:X: a seeded choice of round(F * gpus) GPUs run every kernel X times slower; an HDP
  rank with a straggler GPU is that slow (its TP group / pipeline waits for it).

Draws depend on (noise seed, step) only, so a run is reproducible; the straggler choice on the
noise seed only (the same slow GPUs for every step and strategy).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import TYPE_CHECKING

from hdp.plan.cost.cost_model import ATTN_FWD_SHARE

if TYPE_CHECKING:
    from hdp.plan.cost.cost_model import CostModel
    from hdp.plan.types import Plan
    from hdp.sim.cluster import Cluster
    from hdp.sim.microbatch import MicroBatchTime

_PHI_INV = NormalDist().inv_cdf


@dataclass(frozen=True, slots=True)
class Noise:
    jitter: float = 0.0
    """Sigma of the lognormal factor on every kernel (0: none)."""
    straggler_fraction: float = 0.0
    straggler_factor: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.jitter >= 0 and math.isfinite(self.jitter)):
            raise ValueError(f"--jitter must be a finite number >= 0, got {self.jitter}")
        if not 0 <= self.straggler_fraction <= 1:
            raise ValueError(f"--straggler F:X needs 0 <= F <= 1, got F = {self.straggler_fraction}")
        if not (self.straggler_factor > 0 and math.isfinite(self.straggler_factor)):
            raise ValueError(f"--straggler F:X needs a finite X > 0, got X = {self.straggler_factor}")

    @property
    def active(self) -> bool:
        """False: the simulator takes the noiseless path (numbers exactly as without noise)."""
        return self.jitter > 0 or (self.straggler_fraction > 0 and self.straggler_factor != 1)

    def with_seed(self, seed: int) -> "Noise":
        return Noise(self.jitter, self.straggler_fraction, self.straggler_factor, seed)

    def slow_gpus(self, gpus: int) -> frozenset[int]:
        count = round(self.straggler_fraction * gpus) if self.straggler_factor != 1 else 0
        return frozenset(random.Random(f"hdp-straggler:{self.seed}").sample(range(gpus), count))

    def rank_factors(self, num_ranks: int, gpus_per_rank: int) -> list[float]:
        """Straggler factor of every HDP rank (1 or X)."""
        slow = self.slow_gpus(num_ranks * gpus_per_rank)
        return [self.straggler_factor if any(r * gpus_per_rank + j in slow for j in range(gpus_per_rank)) else 1.0
                for r in range(num_ranks)]

    def rng(self, step: int) -> random.Random:
        return random.Random(f"hdp-noise:{self.seed}:{step}")


def parse_straggler(text: str | None) -> tuple[float, float]:
    """``F:X`` -> (F, X); None -> no stragglers."""
    if text is None:
        return 0.0, 1.0
    try:
        f, x = (float(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--straggler takes F:X (a fraction of GPUs and how many times slower), got {text!r}") from None
    return f, x


class Draws:
    """Lognormal factors of one step's kernels (a seeded stream)."""

    def __init__(self, noise: Noise, step: int) -> None:
        self.sigma = noise.jitter
        self._shift = -noise.jitter ** 2 / 2
        self._rng = noise.rng(step)

    def one(self) -> float:
        """One kernel's factor."""
        if self.sigma == 0:
            return 1.0
        return math.exp(self.sigma * self._rng.gauss(0.0, 1.0) + self._shift)

    def max_of(self, n: int) -> float:
        """The largest factor among n members' kernels (exact: one uniform)."""
        if self.sigma == 0 or n <= 0:
            return 1.0
        u = self._rng.random() or 2.0 ** -53
        v = min(u ** (1.0 / n), 1.0 - 2.0 ** -53)
        return math.exp(self.sigma * _PHI_INV(v) + self._shift)

    def max_of_many(self, n: int, count: int) -> list[float]:
        """``count`` independent ``max_of(n)`` (the same stream, drawn in one go)."""
        if self.sigma == 0 or n <= 0:
            return [1.0] * count
        rnd, inv, exp, e = self._rng.random, _PHI_INV, math.exp, 1.0 / n
        sigma, shift, top, tiny = self.sigma, self._shift, 1.0 - 2.0 ** -53, 2.0 ** -53
        return [exp(sigma * inv(min((rnd() or tiny) ** e, top)) + shift) for _ in range(count)]

    def ring_steps(self, normal: int, slow: int, x: float, count: int) -> list[float]:
        """``count`` ring steps' factors (``ring_step``)."""
        if not slow:
            return self.max_of_many(normal, count)
        return [self.ring_step(normal, slow, x) for _ in range(count)]

    def ring_step(self, normal: int, slow: int, x: float) -> float:
        """A ring step's factor: ``normal`` members at 1x, ``slow`` at ``x``; the slowest sets it."""
        if not slow:
            return self.max_of(normal)
        a = self.max_of(normal) if normal else 0.0
        return max(a, x * self.max_of(slow))


def apply_noise(plan: Plan, cost: CostModel, cluster: Cluster, noise: Noise, step: int,
                times: list[list[MicroBatchTime]]) -> list[list[MicroBatchTime]]:
    """``times`` with every kernel's noise (see the module); communication keeps its clean times.

    A ring micro-batch (a unit: the micro-batches carrying the same rings) runs its members in
    lockstep: its attention is the sum over layers, passes and steps of the step's block times the
    slowest member's factor; the rest of its compute ends with the slowest member's, and a faster
    member's difference is its ``sync_wait_s``."""
    strag = noise.rank_factors(plan.num_ranks, cluster.gpus_per_rank)
    draws = Draws(noise, step)
    passes = (ATTN_FWD_SHARE, 1 - ATTN_FWD_SHARE) + ((ATTN_FWD_SHARE,) if cost.recompute == "full" else ())
    units: dict[tuple, float] = {}
    rest: list[list[float]] = []
    lockstep: dict[tuple, float] = {}
    for r, rp in enumerate(plan.ranks):
        row = []
        for mb, t in zip(rp.micro_batches, times[r]):
            own = (t.compute_s - t.ring_attn_s) * draws.one() * strag[r]
            row.append(own)
            if mb.rings:
                if mb.rings not in units:
                    units[mb.rings] = _ring_attention(plan, mb.rings, t, strag, draws, passes, cost.layers,
                                                      noise.straggler_factor)
                lockstep[mb.rings] = max(lockstep.get(mb.rings, 0.0), own)
        rest.append(row)
    out = []
    for r, rp in enumerate(plan.ranks):
        row_t = []
        for mb, t, own in zip(rp.micro_batches, times[r], rest[r]):
            if mb.rings:
                t = replace(t, compute_s=own + units[mb.rings], sync_wait_s=lockstep[mb.rings] - own)
            else:
                t = replace(t, compute_s=own)
            row_t.append(t)
        out.append(tuple(row_t))
    return out


def _ring_attention(plan: Plan, rings: tuple[int, ...], t: MicroBatchTime, strag: list[float], draws: Draws,
                    passes: tuple[float, ...], layers: int, x: float) -> float:
    """Noisy ring attention of one unit: every step waits for its slowest member."""
    if not t.tiles:
        return t.ring_attn_s
    members = {m for g in rings for m in plan.rings[g].ranks}
    slow = sum(1 for m in members if strag[m] != 1.0)
    normal = len(members) - slow
    kmax = max(rt.k for _, rt in t.tiles)
    sizes = sorted({rt.k for _, rt in t.tiles})
    total = 0.0
    every = draws.ring_steps(normal, slow, x, layers * len(passes) * kmax)
    for j in range(layers * len(passes)):
        w = passes[j % len(passes)]
        factors = every[j * kmax:(j + 1) * kmax]
        first = factors[0]
        upto = dict(zip(sizes, (math.fsum(factors[:k]) for k in sizes)))
        for _, rt in t.tiles:
            total += w * (rt.local_s * first + rt.other_s * (upto[rt.k] - first))
    return total
