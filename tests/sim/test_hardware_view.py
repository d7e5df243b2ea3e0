"""The simulator's own view of the hardware: ring tiles, shared copy links, kernel noise and stragglers.
Pure Python, no torch."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import pytest

from hdp.cli import main
from hdp.plan import build_cost_model, make_plan
from hdp.plan.cost.cost_model import CostModel
from hdp.plan.schedule.draft import Draft
from hdp.plan.cost.topology import Topology
from hdp.sim import Cluster, simulate_step
from hdp.sim.contention import concurrency, copy_rate, nic_sends
from hdp.sim.kernels import ring_tiles
from hdp.sim.noise import Draws, Noise
from hdp.sim.training_step import clean_times

COST = build_cost_model("llama-7b")
M, DEV = COST.model, COST.device


# ---- ring tiles ----------------------------------------------------------------------------------

def test_tiles_cost_the_planners_flops_at_the_pair_kernels_rates():
    length, k = 2**16, 4
    p = length / (2 * k)  # 8K-token pieces
    diag = 3.5 * 2 * M.hidden_size * p * p / (DEV.attn_efficiency(p) * 1e12)
    full = 3.5 * 4 * M.hidden_size * p * p / (DEV.attn_efficiency(math.sqrt(2) * p) * 1e12)
    tiles = ring_tiles(COST, length, k)
    assert tiles.local_s == pytest.approx(2 * diag + full, rel=1e-12)
    assert tiles.other_s == pytest.approx(2 * full, rel=1e-12)
    planner = COST.attn_layer_time(length, doc_len=p) / k  # a causal document of L/2k tokens
    # The calibrated rate grows from 8K to 11.6K tokens: full pairs run faster than the planner assumes.
    assert DEV.attn_efficiency(math.sqrt(2) * p) > DEV.attn_efficiency(p)
    assert tiles.layer_s < planner
    # With a flat efficiency curve the tiles are exactly the planner's FLOPs: only the rates differ.
    flat = dataclasses.replace(DEV, attn_tflops=((1, 400.0), (2**22, 400.0)))
    cost = CostModel(M, flat)
    assert ring_tiles(cost, length, k).layer_s == pytest.approx(cost.attn_layer_time(length) / k, rel=1e-12)


def test_a_ring_micro_batch_is_cheaper_than_the_planners_estimate():
    from hdp.plan.estimate import micro_batch_time

    plan = make_plan([2**17], 8, 2**14 + 8, COST, "hdp-naive")
    mb = plan.ranks[0].micro_batches[0]
    assert mb.rings
    sim = clean_times(plan, COST, Cluster(8))[0][0]
    assert sim.compute_s < micro_batch_time(plan, mb, COST)
    whole = make_plan([5000], 1, 8192, COST, "hdp-naive")  # no ring: exactly the planner's time
    assert clean_times(whole, COST, Cluster(1))[0][0].compute_s == micro_batch_time(whole, whole.ranks[0].micro_batches[0], COST)


# ---- contention ----------------------------------------------------------------------------------

def offload_plan(ranks: int, layers: int, length: int = 6000):
    draft = Draft([length] * ranks, ranks, 8192)
    for r in range(ranks):
        draft.ranks[r].append(draft.seq_micro_batch([r], offload_layers=layers))
    return draft.finish("test", COST)


def test_eight_gpus_offloading_at_once_take_longer_than_one():
    # The most layers whose copies a GPU's private 55 GB/s lane hides under the compute.
    layers = max(n for n in range(1, COST.layers - 1)
                 if simulate_step(offload_plan(1, n), COST, Cluster(1)).ranks[0].comm_s == 0)
    assert layers >= 4
    plan = offload_plan(8, layers)
    alone = simulate_step(plan, COST, Cluster(8, gpus_per_node=1))  # each GPU on its own node
    shared = simulate_step(plan, COST, Cluster(8, gpus_per_node=8))
    assert alone.ranks[0].comm_s == 0
    assert all(r.comm_s > 0 for r in shared.ranks)  # 300 GB/s of host memory over 8 copies: 37.5 each
    busy = [r.step_time_s - r.grad_sync_s for r in (alone, shared)]  # the gradient sync runs on other links
    assert busy[1] > busy[0]
    assert simulate_step(offload_plan(1, layers), COST, Cluster(1)).step_time_s == pytest.approx(busy[0], rel=1e-12)


def test_copy_rate_and_concurrency():
    assert copy_rate(55.0, 300.0, 64.0, 0.0) == 55.0
    assert copy_rate(55.0, 300.0 / 8, 64.0, 0.0) == 37.5
    assert copy_rate(55.0, 300.0, 64.0, 20.0) == 44.0  # the NIC takes 20 of the 64 GB/s link
    assert copy_rate(55.0, 300.0, 64.0, 50.0) == 32.0  # at least half the link
    n = concurrency([(0, 0.0, 2.0, 1), (1, 1.0, 3.0, 1), (2, 5.0, 6.0, 1)])
    assert n == {0: 1.5, 1: 1.5, 2: 1.0}


def test_nic_sends_by_algorithm():
    cluster = Cluster(16, gpus_per_node=4)
    for algo, want in (("two-level", [3.0] * 16), ("flat", [15.0 if r % 4 == 3 else 0.0 for r in range(16)])):
        draft = Draft([2**16], 16, 2**12 + 8)
        g = draft.new_ring(0, list(range(16)))
        for r in range(16):
            draft.ranks[r].append(draft.ring_micro_batch([g]))
        plan = draft.finish("test", COST, topology=Topology(4, algo, 450, 50, 2e-6, 5e-6, M.num_kv_heads))
        assert [nic_sends(plan, 0, r, cluster) for r in range(16)] == want


# ---- noise ---------------------------------------------------------------------------------------

def ring_plan(k: int = 8):
    return make_plan([2**17], k, 2**17 // k + 8, COST, "hdp-naive")


def mixed_plan():
    return make_plan([2**17] + [3000] * 40, 16, 2**14 + 8, COST, "hdp")


def test_jitter_zero_is_no_jitter_exactly():
    plan = mixed_plan()
    clean = simulate_step(plan, COST, Cluster(16))
    for noise in (Noise(0.0), Noise(0.0, 0.5, 1.0), Noise(0.0, seed=7)):
        assert not noise.active
        assert simulate_step(plan, COST, Cluster(16), noise) == clean


def test_jitter_is_seeded():
    plan = mixed_plan()
    a = simulate_step(plan, COST, Cluster(16), Noise(0.1, seed=3), step=1)
    assert a == simulate_step(plan, COST, Cluster(16), Noise(0.1, seed=3), step=1)
    assert a.step_time_s != simulate_step(plan, COST, Cluster(16), Noise(0.1, seed=4), step=1).step_time_s
    assert a.step_time_s != simulate_step(plan, COST, Cluster(16), Noise(0.1, seed=3), step=2).step_time_s
    clean = simulate_step(plan, COST, Cluster(16))
    assert a.step_time_s > clean.step_time_s  # mean-preserving noise, but the step waits for the slowest


def test_max_of_n_is_the_max_of_n_draws():
    draws = Draws(Noise(0.2, seed=1), 0)
    exact = statistics.fmean(draws.max_of(8) for _ in range(20000))
    direct = statistics.fmean(max(draws.one() for _ in range(8)) for _ in range(20000))
    assert exact == pytest.approx(direct, rel=0.01)
    assert statistics.fmean(draws.one() for _ in range(20000)) == pytest.approx(1.0, abs=0.01)  # mean 1


def test_a_ring_waits_for_its_slowest_member():
    plan = ring_plan(8)
    cluster = Cluster(8)
    clean = simulate_step(plan, COST, cluster)
    everyone = simulate_step(plan, COST, cluster, Noise(0.0, 1.0, 3.0))
    one = simulate_step(plan, COST, cluster, Noise(0.0, 1 / 8, 3.0))  # one straggler among the 8 members
    assert len(Noise(0.0, 1 / 8, 3.0).slow_gpus(8)) == 1
    assert one.step_time_s == pytest.approx(everyone.step_time_s, rel=1e-12)
    busy = clean.step_time_s - clean.grad_sync_s
    assert everyone.step_time_s - everyone.grad_sync_s == pytest.approx(3 * busy, rel=1e-9)  # no comm exposed
    noisy = simulate_step(plan, COST, cluster, Noise(0.1, seed=2))
    t = noisy.times[0][0]
    members = [noisy.times[r][0] for r in range(8)]
    ends = [m.total_s for m in members]
    assert max(ends) - min(ends) <= 1e-12 * max(ends)  # lockstep: every member ends with the slowest
    assert min(m.sync_wait_s for m in members) >= 0 and max(m.sync_wait_s for m in members) > 0
    assert t.total_s >= max(m.compute_s for m in members)


def test_a_straggler_slows_the_step():
    plan = make_plan([3000] * 64, 16, 8192, COST, "hdp")
    clean = simulate_step(plan, COST, Cluster(16))
    slow = simulate_step(plan, COST, Cluster(16), Noise(0.0, 0.25, 2.0))
    assert slow.step_time_s > 1.5 * clean.step_time_s


def test_simulate_json_reports_mean_and_worst_over_noise_seeds(capsys):
    argv = ["simulate", "--gpus", "16", "--tokens", "300000", "--max-len", "65536", "--strategies", "hdp,pow2",
            "--json", "--quiet"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    for row in plain["strategies"].values():
        assert row["step_time_mean_s"] == row["step_time_worst_s"] == row["step_time_s"]
        assert row["noise_seeds"] == 1
    assert main([*argv, "--jitter", "0.1", "--straggler", "0.1:1.5", "--seeds", "3"]) == 0
    noisy = json.loads(capsys.readouterr().out)
    assert noisy["jitter"] == 0.1 and noisy["straggler"] == "0.1:1.5" and noisy["noise_seeds"] == 3
    for name, row in noisy["strategies"].items():
        assert set(plain["strategies"][name]) <= set(row)  # existing keys kept
        assert row["noise_seeds"] == 3
        assert row["step_time_worst_s"] >= row["step_time_mean_s"] > plain["strategies"][name]["step_time_s"]
        assert row["step_time_mean_s"] == pytest.approx(row["step_time_s"], rel=1e-12)
    assert main([*argv[:-2], "--jitter", "0.1", "--seeds", "2", "--quiet"]) == 0
    assert "worst s" in capsys.readouterr().out
