"""``hdp train --dry-run``: every rank's real step on the fake process group, matched as NCCL would.

Small worlds (tiny model, 8-32 ranks) so the suite stays fast; docs/dry-run.md has the 1,024-rank figures.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from hdp.runtime.config import TrainConfig
from hdp.runtime.dryrun.command import check_templates, dry_run
from hdp.runtime.dryrun.drive import SyntheticBatch, record_step
from hdp.runtime.dryrun.match import match
from hdp.runtime.dryrun.report import rank_figures
from hdp.runtime.train.run import Run
from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model
from hdp.plan.cost.model_config import get_model

WORLD = 32
CONFIG = TrainConfig(model="tiny", capacity=256, max_seq_len=2048, gpus_per_node=8, global_batch_tokens=8192)


def plan_for(config: TrainConfig, world: int, tokens: int):
    lengths = sample_lengths("byted", tokens, config.max_seq_len, 0)
    from hdp.runtime.dryrun.command import _Stream

    run = Run(config, _Stream(SyntheticBatch(lengths)), build_cost_model(get_model(config.model)))  # type: ignore[arg-type]
    return run.plan(0, world), SyntheticBatch(lengths)


@pytest.fixture(scope="module")
def exact():
    plan, batch = plan_for(CONFIG, WORLD, 8192)
    assert plan.rings and any(len(r.ranks) > 2 for r in plan.rings)
    return record_step(CONFIG, plan, batch, WORLD, templated=False)


def key(op):
    return (op.kind, op.peer, op.group, op.numel, op.dtype, op.tag, op.ref)


@pytest.mark.timeout(120)
def test_every_rank_matches_and_completes(exact) -> None:
    result = match(exact.ops, WORLD)
    assert result.matched, result.errors
    kinds = {op.kind for ops in exact.ops for op in ops}
    assert {"send", "recv", "wait", "all_reduce", "reduce_scatter_single", "all_gather_single"} <= kinds
    # The step's host syncs do not grow with the ranks' work: the same count on every rank.
    assert len(set(exact.host_syncs)) == 1 and exact.host_syncs[0] <= 4


@pytest.mark.timeout(120)
def test_templated_rings_give_the_same_traffic_as_running_every_ring(exact) -> None:
    templated = record_step(CONFIG, exact.plan, SyntheticBatch([s.length for s in exact.plan.sequences]), WORLD,
                            templated=True)
    assert any(op.kind == "phase" for ops in templated.ops for op in ops)
    assert match(templated.ops, WORLD).matched
    assert check_templates(templated.templates).matched
    cost = build_cost_model(get_model("tiny"))
    a = rank_figures(exact, cost, 8, 2)
    b = rank_figures(templated, cost, 8, 2)
    assert a == b


@pytest.mark.timeout(180)
def test_skeleton_issues_the_full_models_ops() -> None:
    config = dataclasses.replace(CONFIG, global_batch_tokens=4096)
    plan, batch = plan_for(config, 8, 4096)
    assert plan.rings
    full = record_step(config, plan, batch, 8, full=True, templated=False)
    skeleton = record_step(config, plan, batch, 8, templated=False)
    assert [[key(op) for op in ops] for ops in full.ops] == [[key(op) for op in ops] for ops in skeleton.ops]


def _first(ops, kind):
    for rank, seq in enumerate(ops):
        for i, op in enumerate(seq):
            if op.kind == kind:
                return rank, i
    raise AssertionError(kind)


@pytest.mark.timeout(60)
def test_a_planted_wrong_size_is_named(exact) -> None:
    ops = [list(seq) for seq in exact.ops]
    rank, i = _first(ops, "send")
    ops[rank][i] = dataclasses.replace(ops[rank][i], numel=ops[rank][i].numel + 1)
    result = match(ops, WORLD)
    assert not result.matched
    assert any(f"rank {rank} op #{i}" in e and f"send to rank {ops[rank][i].peer}" in e and "sizes differ" in e
               for e in result.errors), result.errors


@pytest.mark.timeout(60)
def test_a_planted_missing_receive_is_a_named_deadlock(exact) -> None:
    ops = [list(seq) for seq in exact.ops]
    rank, i = _first(ops, "recv")
    peer = ops[rank][i].peer
    ops[rank][i] = dataclasses.replace(ops[rank][i], kind="wait", ref=-5)  # the receive is never posted
    result = match(ops, WORLD)
    assert not result.matched
    assert any("deadlock" in e for e in result.errors), result.errors
    assert any(f"rank {peer}" in e for e in result.errors), result.errors


@pytest.mark.timeout(60)
def test_swapped_collectives_are_named(exact) -> None:
    ops = [list(seq) for seq in exact.ops]
    seq = ops[3]
    idx = [i for i, op in enumerate(seq) if op.kind in ("reduce_scatter_single", "all_gather_single")]
    a, b = idx[0], idx[-1]
    seq[a], seq[b] = seq[b], seq[a]
    result = match(ops, WORLD)
    assert not result.matched
    assert any("rank 3 op #" in e and "differ" in e for e in result.errors), result.errors


@pytest.mark.timeout(120)
def test_cli_json_and_bad_input() -> None:
    cmd = [sys.executable, "-m", "hdp.cli", "train", "--dry-run", "--world-size", "16", "--model", "tiny",
           "--gpus-per-node", "8", "--tokens", "8192", "--max-len", "2048", "--capacity", "256", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["matched"] is True and data["errors"] == [] and len(data["ranks"]) == 16
    assert {"rank", "peak_memory_bytes", "peers", "host_syncs", "nic_bytes", "nvlink_bytes"} <= set(data["ranks"][0])
    bad = subprocess.run([("0" if prev == "--world-size" else a) for prev, a in zip(["", *cmd], cmd)],
                         capture_output=True, text=True, timeout=100)
    assert bad.returncode == 2 and "--world-size" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_dry_run_refuses_a_world_of_no_ranks() -> None:
    with pytest.raises(ValueError, match="--world-size"):
        dry_run(CONFIG, 0)


@pytest.mark.timeout(120)
def test_a_ring_shape_whose_protocol_is_wrong_is_named(exact) -> None:
    """Template mode checks each ring shape op by op: a receive sized by the wrong member's tokens is caught
    even where both members happen to hold the same number of tokens."""
    templated = record_step(CONFIG, exact.plan, SyntheticBatch([s.length for s in exact.plan.sequences]), WORLD,
                            templated=True)
    (shape, position, direction), ops = next((k, v) for k, v in templated.templates.ops.items()
                                             if any(t.kind == "recv" for t in v))
    recv = next(t for t in ops if t.kind == "recv")
    recv.member = (recv.member + 1) % shape.size
    result = check_templates(templated.templates)
    assert not result.matched
    assert any(f"position {position}" in e and "sizes differ" in e and f"ring shape {shape.algo} x{shape.size}" in e
               for e in result.errors), result.errors


@pytest.mark.timeout(120)
def test_the_fast_paths_record_what_torchs_own_paths_record(exact) -> None:
    """The plan hashed once and meta ``add`` at C++ speed (``fast``) change nothing the dry run reports:
    the same ops on every rank, the same host syncs, per-rank figures and matcher verdict."""
    slow = record_step(CONFIG, exact.plan, SyntheticBatch([s.length for s in exact.plan.sequences]), WORLD,
                       templated=False, fast=False)
    assert [[key(op) for op in ops] for ops in slow.ops] == [[key(op) for op in ops] for ops in exact.ops]
    assert slow.host_syncs == exact.host_syncs and slow.ring_buffers == exact.ring_buffers
    cost = build_cost_model(get_model("tiny"))
    assert rank_figures(slow, cost, 8, 2) == rank_figures(exact, cost, 8, 2)
    assert match(slow.ops, WORLD).matched == match(exact.ops, WORLD).matched is True


def test_fast_meta_adds_give_torchs_shapes_dtypes_and_strides() -> None:
    import torch

    from hdp.runtime.dryrun.skeleton import fast_meta_adds

    a, b = torch.empty(6, 4, device="meta"), torch.empty(6, 4, device="meta")
    cases = [(a, b), (a, torch.empty(4, device="meta")), (a.t(), b.t()), (a, b.to(torch.bfloat16)),
             (a.to(torch.float64), b.to(torch.float64)), (a, 2.0)]

    def results() -> list:
        out = []
        for x, y in cases:
            z, w = x + y, torch.add(x, y, alpha=2)
            x2 = x.clone()
            r = x2.add_(y) if not isinstance(y, torch.Tensor) or y.dtype == x.dtype else x2
            out.append((z.shape, z.dtype, z.stride(), w.shape, w.dtype, w.stride(), r is x2, r.shape, r.stride()))
        return out

    reference = results()
    with fast_meta_adds():
        assert results() == reference
    assert results() == reference  # torch's kernel is back


@pytest.mark.timeout(120)
def test_memtracker_peak_of_the_worst_rank_beside_the_formula() -> None:
    """torch's MemTracker on the worst rank's full-model step: its parameters, gradients and optimizer
    states are the formula's model states to the byte; the whole peak adds what the formula leaves out
    (the [T, V] logits and backward temporaries, which dominate a tiny model's small hidden size)."""
    from hdp.plan.cost.memory import state_bytes
    from hdp.runtime.dryrun.memory import tracked_peak

    config = dataclasses.replace(CONFIG, global_batch_tokens=2048, max_seq_len=512)
    plan, batch = plan_for(config, 4, 2048)
    assert plan.rings
    cost = dataclasses.replace(build_cost_model(get_model("tiny"), dtype=config.dtype), zero=config.zero_for(4))
    rec = record_step(config, plan, batch, 4, templated=False)
    figures = rank_figures(rec, cost, 8, get_model("tiny").num_layers)
    worst = max(figures, key=lambda r: r["peak_memory_bytes"])
    tracked = tracked_peak(config, plan, batch, 4, worst["rank"])
    states = tracked["Parameter"] + tracked["Gradient"] + tracked["Optstate"] + tracked["Other"]
    assert states == cost.model_state_bytes(4) == state_bytes(
        sum(p.numel() for p in _decoder_params(config)), dtype="float32", zero=config.zero_for(4), world_size=4).peak
    ratio = tracked["Total"] / worst["peak_memory_bytes"]
    assert 1.0 < ratio < 6.0, (tracked, worst)


def _decoder_params(config: TrainConfig):
    import torch

    from hdp.runtime.dryrun.drive import _fake_model

    with torch.device("meta"):
        return list(_fake_model(config).parameters())
