"""Single-process pieces of training: global batches, labels across ring pieces, the layer hook."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from hdp.data.batches import BatchStream, GlobalBatch, Slice
from hdp.data.corpus import BytesCorpus, default_corpus
from hdp.plan import get_model
from hdp.plan.types import MicroBatch, Plan, RankPlan, Ring, Segment, Sequence
from hdp.runtime.attention.layout import Span
from hdp.runtime.train.inputs import IGNORE, rank_inputs
from hdp.runtime.model.decoder import build_model
from tests.conftest import plain_attention

pytestmark = pytest.mark.timeout(30)


def test_global_batch_depends_on_seed_and_step_only_and_has_exactly_the_asked_tokens():
    corpus = BytesCorpus((b"a" * 10, b"b" * 3, b"c" * 25))
    stream = BatchStream(corpus, global_batch_tokens=7, max_seq_len=4, seed=3)
    again = BatchStream(corpus, global_batch_tokens=7, max_seq_len=4, seed=3)
    for step in (0, 1, 5, 20):  # 20 wraps into later epochs
        batch = stream.batch(step)
        assert sum(batch.lengths) == 7 and max(batch.lengths) <= 4
        assert batch.slices == again.batch(step).slices
    # Consecutive steps tile the token stream: over one epoch every token is used exactly once.
    used: dict[tuple[int, int], int] = {}
    for step in range(38 // 2):
        for s in BatchStream(corpus, 2, 4, seed=3).batch(step).slices:
            for i in range(s.start, s.start + s.length):
                used[(s.doc, i)] = used.get((s.doc, i), 0) + 1
    assert sorted(used) == [(d, i) for d, n in enumerate((10, 3, 25)) for i in range(n)] and set(used.values()) == {1}


def test_empty_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="corpus is empty"):
        BatchStream(BytesCorpus((b"",)), 16, 8)


def test_default_corpus_is_the_standard_library_sorted():
    corpus = default_corpus()
    assert len(corpus.doc_lengths) > 100 and list(corpus.paths) == sorted(corpus.paths)
    assert all(n > 0 for n in corpus.doc_lengths)


def test_ring_piece_labels_come_from_the_next_piece_and_the_last_token_has_none():
    data = bytes(range(10, 22))  # one sequence of 12 tokens on a ring of 2: pieces of 3
    batch = GlobalBatch(BytesCorpus((data,)), (Slice(0, 0, 12),))
    mb = lambda segs: MicroBatch(tuple(segs), (0,), 0.0, 8)  # noqa: E731
    plan = Plan("test", 2, 8, (Sequence(0, 12),), (Ring(0, 0, (0, 1)),),
                (RankPlan(0, (mb([Segment(0, 0, 3), Segment(0, 9, 12)]),)),
                 RankPlan(1, (mb([Segment(0, 3, 6), Segment(0, 6, 9)]),))))
    (r0,) = rank_inputs(plan, batch, 0, torch.device("cpu"))
    (r1,) = rank_inputs(plan, batch, 1, torch.device("cpu"))
    assert r0.positions.tolist() == [0, 1, 2, 9, 10, 11]
    assert r0.tokens.tolist() == [10, 11, 12, 19, 20, 21]
    assert r0.labels.tolist() == [11, 12, 13, 20, 21, IGNORE]  # 13 lives on rank 1
    assert r1.labels.tolist() == [14, 15, 16, 17, 18, 19]      # 19 lives on rank 0


def test_layer_context_wraps_each_layer_and_changes_nothing():
    model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=0,
                        attention=plain_attention)
    tokens, pos = torch.arange(9) * 7 % 256, torch.arange(9)
    layout = SimpleNamespace(spans=(Span(0, 0, 9, 0),), rings=())
    entered: list[int] = []

    def ctx(i: int):
        entered.append(i)
        return contextlib.nullcontext()

    plain = model(tokens, pos, layout)
    hooked = model(tokens, pos, layout, layer_context=ctx)
    assert entered == list(range(model.cfg.num_layers))
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)


def test_attention_metadata_is_built_once_per_micro_batch_and_shared_by_every_layer(monkeypatch):
    """torchtitan-style: masks and row indices per micro-batch, not per layer (L layers, 1 build)."""
    from hdp.runtime.attention import dispatch as attention_module
    from hdp.runtime.train import inputs as micro_batch_inputs
    from hdp.runtime.train.step import forward_backward
    from tests.conftest import build_plan

    builds: list[object] = []
    real = attention_module.MicroBatchAttention

    class Counted(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            builds.append(self)

    monkeypatch.setattr(micro_batch_inputs, "MicroBatchAttention", Counted)
    seen: list[object] = []

    def spy(q, k, v, batch):  # type: ignore[no-untyped-def]
        seen.append(batch)
        return attention_module.hdp_attention(q, k, v, batch)

    cfg = get_model("small")
    model = build_model(cfg, dtype=torch.float64, device=torch.device("cpu"), seed=0, attention=spy)
    lengths = [5, 9, 3, 12]
    plan = build_plan(1, lengths, [[("doc", 0, 0), ("doc", 1, 0)], [("doc", 2, 0), ("doc", 3, 0)]])
    data = tuple(bytes(range(i, i + n)) for i, n in enumerate(lengths))
    batch = GlobalBatch(BytesCorpus(data), tuple(Slice(i, 0, n) for i, n in enumerate(lengths)))
    forward_backward(model, plan, batch, 0, torch.device("cpu"), timeout_s=5.0)
    assert len(builds) == 2  # one per micro-batch
    assert seen == [builds[0]] * cfg.num_layers + [builds[1]] * cfg.num_layers


def test_a_resumed_runs_progress_bar_starts_at_the_steps_already_done(tmp_path):
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.observe.report import Reporter

    rep = Reporter(TrainConfig(steps=5, metrics=str(tmp_path / "m.jsonl")), enabled=True, start_step=3)
    try:
        assert rep._progress.done == 3 and rep._progress.total == 5
        rep.step({"step": 3, "loss": 1.0, "tokens_per_s": 10.0})
        assert rep._progress.done == 4
    finally:
        rep.close()
