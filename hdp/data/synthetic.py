"""Synthetic global batches with the published shapes of long-context corpora (no torch, no download).

Each distribution is a mixture of log-uniform bands, so the heavy tail holds most tokens while most
sequences are short. Shapes at ``max_len`` = 2M (docs/design.md):

* ``byted``: ~80% of sequences <= 4K; sequences >= 128K are ~1% of sequences and ~44% of tokens;
  ~0.08% sit at max_len and hold ~12% of tokens (a production corpus as ByteScale reports it).
* ``github``: a code corpus; ~16% of tokens in sequences > 128K, a thinner extreme tail.
* ``uniform``: lengths uniform in [1, max_len].

A batch is drawn until it holds exactly ``total_tokens`` (the last sequence is shortened), so the
same (distribution, tokens, max_len, seed) always gives the same lengths.
"""

from __future__ import annotations

import math
import random
from typing import Callable

# (probability, low, high) bands; bounds above max_len are clipped to it; high=None means max_len.
_BANDS: dict[str, list[tuple[float, int, int | None]]] = {
    "byted": [(0.8027, 64, 4096), (0.19, 4096, 131072), (0.0065, 131072, None), (0.0008, -1, None)],
    "github": [(0.85, 128, 8192), (0.1477, 8192, 131072), (0.0023, 131072, None)],
}
DISTRIBUTIONS = ("byted", "github", "uniform")


def sample_lengths(dist: str, total_tokens: int, max_len: int, seed: int = 0) -> list[int]:
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {dist!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    if total_tokens < 1 or max_len < 1:
        raise ValueError("--tokens and --max-len must be >= 1")
    rng = random.Random(f"{dist}:{seed}")
    draw = _uniform(rng, max_len) if dist == "uniform" else _mixture(rng, _BANDS[dist], max_len)
    out: list[int] = []
    left = total_tokens
    while left > 0:
        n = min(draw(), left)
        out.append(n)
        left -= n
    return out


def _uniform(rng: random.Random, max_len: int) -> Callable[[], int]:
    return lambda: rng.randint(1, max_len)


def _mixture(rng: random.Random, bands: list[tuple[float, int, int | None]], max_len: int) -> Callable[[], int]:
    weights = [b[0] for b in bands]

    def draw() -> int:
        p, lo, hi = rng.choices(bands, weights)[0]
        if lo < 0:  # a point mass at max_len
            return max_len
        hi = min(hi or max_len, max_len)
        lo = min(lo, hi)
        return max(1, min(max_len, int(math.exp(rng.uniform(math.log(lo), math.log(hi))))))

    return draw


def read_lengths(path: str) -> list[int]:
    """One integer per line; blank lines and ``#`` comments allowed."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as e:
        raise ValueError(f"cannot read lengths file {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"lengths file {path!r} is not text: give one integer length per line") from None
    out = []
    for no, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            out.append(int(text))
        except ValueError:
            raise ValueError(f"{path}:{no}: {text!r} is not an integer length") from None
    return out
