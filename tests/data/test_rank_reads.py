"""With a prepared store, planning reads lengths only, and each rank reads from the memory map only
the token ranges of its own segments (plus the one label token after each)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hdp.data.batches import BatchStream
from hdp.data.prepare import prepare
from hdp.data.store import Store, TokenCorpus
from hdp.plan import build_cost_model, make_plan
from hdp.runtime.train.inputs import rank_inputs
from tests.data import files

pytestmark = pytest.mark.timeout(60)


class RecordingTokens:
    """The store's memory map, recording every [start, end) range read from it."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens, self.ranges = tokens, []

    def __getitem__(self, index):
        assert isinstance(index, slice) and index.step is None, "reads are contiguous ranges"
        self.ranges.append((index.start, index.stop))
        return self.tokens[index]

    def __len__(self) -> int:
        return len(self.tokens)


@pytest.mark.parametrize("strategy, num_ranks", [("hdp", 5), ("static", 4)])
def test_each_rank_reads_only_its_segments(strategy, num_ranks, tmp_path):
    src = files.write_jsonl(str(tmp_path / "d.jsonl"), files.texts(80, seed=5))
    prepare(src, str(tmp_path / "s"), progress=False)
    stored = Store.open(str(tmp_path / "s")).corpus()
    assert isinstance(stored.tokens, np.memmap)
    recorder = RecordingTokens(stored.tokens)
    corpus = TokenCorpus(recorder, stored.offsets, stored.doc_lengths)
    stream = BatchStream(corpus, global_batch_tokens=3000, max_seq_len=1500, seed=2)
    cost = build_cost_model("tiny")
    for step in range(3):
        batch = stream.batch(step)
        plan = make_plan(batch.lengths, num_ranks, 400, cost, strategy=strategy, max_len=1500, seed=2)
        assert recorder.ranges == [], "lengths and the plan need no token"
        assert plan.rings, "the case must split sequences over ranks"
        seen = set()
        for rank in range(num_ranks):
            rank_inputs(plan, batch, rank, torch.device("cpu"), timeout_s=None)
            want = set()
            for mb in plan.ranks[rank].micro_batches:
                for seg in mb.segments:
                    s = batch.slices[seg.seq]
                    base = int(stored.offsets[s.doc]) + s.start
                    want.add((base + seg.start, base + min(seg.end + 1, s.length)))
            assert set(recorder.ranges) == want, f"rank {rank} read other tokens"
            assert len(recorder.ranges) == len(want)
            seen |= want
            recorder.ranges.clear()
        # together the ranks read every token of the batch (and a label token past each piece at most)
        covered = sum(e - b for b, e in seen)
        assert sum(batch.lengths) <= covered <= sum(batch.lengths) + sum(len(mb.segments) for rp in plan.ranks
                                                                         for mb in rp.micro_batches)
