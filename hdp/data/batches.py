"""Global batches: a deterministic function of (corpus, max_seq_len, seed, step), never of the ranks.

Documents are cut into consecutive pieces of at most ``max_seq_len`` tokens. Epoch ``e`` visits the
pieces in a permutation seeded by ``(seed, e)``; the epochs laid end to end form one token stream,
and step ``s`` takes tokens ``[s*G, (s+1)*G)`` of it (``G`` = global batch tokens), cutting the piece
at each end. So every step has exactly ``G`` tokens, and any process computes any step's batch
without replaying earlier ones or knowing how many ranks will train on it.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass, field
from typing import Sequence

from hdp.data.corpus import Corpus


@dataclass(frozen=True, slots=True)
class Slice:
    """Tokens ``[start, start + length)`` of document ``doc``: one sequence of a global batch."""

    doc: int
    start: int
    length: int


@dataclass(frozen=True)
class GlobalBatch:
    """The sequences of one step; ``read`` materialises any token range of one of them."""

    corpus: Corpus
    slices: tuple[Slice, ...]

    @property
    def lengths(self) -> list[int]:
        return [s.length for s in self.slices]

    def read(self, seq: int, start: int, end: int) -> Sequence[int]:
        s = self.slices[seq]
        if not 0 <= start <= end <= s.length:
            raise ValueError(f"tokens [{start}, {end}) are outside sequence {seq} of length {s.length}")
        return self.corpus.read(s.doc, s.start + start, s.start + end)


@dataclass
class BatchStream:
    """Step -> GlobalBatch. Caches epoch orders (a per-object cache, not global state)."""

    corpus: Corpus
    global_batch_tokens: int
    max_seq_len: int
    seed: int = 0
    _pieces: list[Slice] = field(init=False, repr=False)
    _epochs: dict[int, tuple[list[Slice], list[int]]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.global_batch_tokens < 2:
            raise ValueError(f"--global-batch-tokens must be >= 2, got {self.global_batch_tokens}")
        if self.max_seq_len < 2:
            raise ValueError(f"--max-seq-len must be >= 2, got {self.max_seq_len}")
        self._pieces = [
            Slice(doc, start, min(self.max_seq_len, n - start))
            for doc, n in enumerate(self.corpus.doc_lengths)
            for start in range(0, n, self.max_seq_len)
        ]
        if not self._pieces:
            raise ValueError("the corpus is empty: it has no document with at least one token")
        self.tokens_per_epoch = sum(p.length for p in self._pieces)

    def _epoch(self, e: int) -> tuple[list[Slice], list[int]]:
        if e not in self._epochs:
            order = list(self._pieces)
            random.Random(self.seed * 1_000_003 + e).shuffle(order)
            ends = list(itertools.accumulate(p.length for p in order))
            self._epochs = {e: (order, ends)}  # keep one epoch: steps move forward
        return self._epochs[e]

    def batch(self, step: int) -> GlobalBatch:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        begin, want = step * self.global_batch_tokens, self.global_batch_tokens
        e, offset = divmod(begin, self.tokens_per_epoch)
        out: list[Slice] = []
        while want > 0:
            order, ends = self._epoch(e)
            i = bisect.bisect_right(ends, offset)
            while want > 0 and i < len(order):
                p = order[i]
                skip = offset - (ends[i] - p.length)  # tokens of this piece already used by step - 1
                take = min(p.length - skip, want)
                out.append(Slice(p.doc, p.start + skip, take))
                want -= take
                offset += take
                i += 1
            e, offset = e + 1, 0
        return GlobalBatch(self.corpus, tuple(out))
