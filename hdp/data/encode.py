"""Tokenize a stream of document batches, in this process or in worker processes, keeping the order.

Both ``hdp data prepare`` and ``hdp train --data FILE`` tokenize through ``encode_stream``, so a
prepared store and the file it came from hold the same ids. The workers get a bounded number of
batches in flight (``2 * workers``): memory stays at a few batches whatever the size of the input.
Empty documents (no tokens, or a missing text) are dropped and counted.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from hdp.data.sources import Batch
from hdp.data.store import token_dtype
from hdp.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class EncodedBatch:
    tokens: np.ndarray
    """The batch's non-empty documents back to back, in the store's dtype (``token_dtype``)."""
    lengths: np.ndarray
    """int64, one per non-empty document."""
    empty: int
    """Documents of the batch with no tokens (skipped)."""
    advance: int
    """Progress units the batch moved (from the source)."""


def encode_batch(tokenizer: Tokenizer, docs: Batch, advance: int = 0) -> EncodedBatch:
    present = [d for d in docs if d]
    kept = [x for x in (tokenizer.encode_many(present) if present else []) if len(x)]
    lengths = np.array([len(x) for x in kept], dtype=np.int64)
    flat = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= tokenizer.vocab_size):
        raise ValueError(f"tokenizer {tokenizer.name!r} gave an id outside [0, {tokenizer.vocab_size}): is it consistent?")
    flat = flat.astype(token_dtype(tokenizer.vocab_size))  # 2 bytes a token for most vocabularies, not 8
    return EncodedBatch(flat, lengths, len(docs) - len(kept), advance)


_WORKER_TOKENIZER: Tokenizer | None = None  # one per worker process, set by its initializer


def _init_worker(tokenizer: Tokenizer) -> None:
    global _WORKER_TOKENIZER
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per process: we parallelise by process
    _WORKER_TOKENIZER = tokenizer


def _encode_in_worker(docs: Batch, advance: int) -> EncodedBatch:
    assert _WORKER_TOKENIZER is not None
    return encode_batch(_WORKER_TOKENIZER, docs, advance)


def encode_stream(tokenizer: Tokenizer, batches: Iterable[tuple[Batch, int]], workers: int = 1) -> Iterator[EncodedBatch]:
    """Encoded batches in input order; ``workers > 1`` tokenizes in that many processes."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers == 1:
        for docs, advance in batches:
            yield encode_batch(tokenizer, docs, advance)
        return
    # spawn: a fresh interpreter per worker, safe whatever threads (Rust, Arrow) this process runs.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(tokenizer,)) as pool:
        pending: collections.deque = collections.deque()
        try:
            for docs, advance in batches:
                pending.append(pool.submit(_encode_in_worker, docs, advance))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
