"""The simulator: event-model sanity, CLI output and errors. Pure Python, no torch, fast."""

from __future__ import annotations

import json
import math
import sys

import pytest

from hdp.cli import main
from hdp.plan import build_cost_model, make_plan
from hdp.plan.schedule.draft import Draft, DraftMicroBatch
from hdp.sim import Cluster, simulate_step
from hdp.plan.cost.cost_model import ATTN_FWD_SHARE
from hdp.sim.pipeline import one_f_one_b

COST = build_cost_model("llama-7b")
M, DEV = COST.model, COST.device


def hand_tiles(seq_len: float, k: int) -> float:
    """One ring member's attention of one layer as the zig-zag kernels compute it: pieces of
    p = s/2k tokens; the local step runs 2 causal p-pairs (2*h*p^2 fwd FLOPs each, at the causal
    rate for p tokens) and a full p x p pair (4*h*p^2, at the rate of the equal-work causal
    document, sqrt(2) p), each of the k-1 other steps 2 full pairs; x3.5 fwd+bwd."""
    p, h = seq_len / (2 * k), M.hidden_size
    diag = 3.5 * 2 * h * p * p / (DEV.attn_efficiency(p) * 1e12)
    full = 3.5 * 4 * h * p * p / (DEV.attn_efficiency(math.sqrt(2) * p) * 1e12)
    return 2 * diag + full + (k - 1) * 2 * full


def hand_layer_time(seq_len: float, ring_size: int = 1) -> tuple[float, float]:
    """(attention, linear) seconds of one layer for one member, from FLOPs and the measured rates:
    causal attention fwd 2*h*s^2 (x3.5 fwd+bwd), a ring member's by its tiles (``hand_tiles``);
    linear 2*(params - norms) per token (x3)."""
    k = ring_size
    attn = (hand_tiles(seq_len, k) if k > 1 else
            3.5 * 2 * M.hidden_size * seq_len**2 / (DEV.attn_efficiency(seq_len) * 1e12))
    lin = 3 * 2 * (M.params_per_layer - 2 * M.hidden_size) * seq_len / k / (DEV.gemm_efficiency(seq_len / k) * 1e12)
    return attn, lin


def test_one_whole_sequence_on_one_gpu_is_its_compute():
    n = 12_345
    plan = make_plan([n], 1, 16_384, COST, "hdp-naive")
    res = simulate_step(plan, COST, Cluster(1))
    attn, lin = hand_layer_time(n)
    want = M.num_layers * (attn + lin + DEV.layer_overhead_s)
    assert res.step_time_s == pytest.approx(want, rel=1e-12)
    assert res.grad_sync_s == 0 and res.ranks[0].comm_s == 0
    assert res.lower_bound_s == pytest.approx(M.num_layers * (attn + lin), rel=1e-12)


def test_one_ring_on_a_slow_link_exposes_the_transfers():
    n, k, bw, lat = 64_000, 2, 1e9, 5e-6
    plan = make_plan([n], k, n // k + 8, COST, "hdp-naive")
    res = simulate_step(plan, COST, Cluster(k, gpus_per_node=1, inter_gbps=bw / 1e9, inter_latency_s=lat))
    attn, lin = hand_layer_time(n, k)
    compute = M.num_layers * (attn + lin + k * DEV.layer_overhead_s)
    kv = n / k * 2 * M.kv_dim * 2  # one member's K and V, bf16
    fwd, bwd = ATTN_FWD_SHARE * attn / k, (1 - ATTN_FWD_SHARE) * attn / k  # one block step
    comm = M.num_layers * (k - 1) * ((lat + kv / bw - fwd) + (lat + 2 * kv / bw - bwd))
    grads = M.num_params * 2
    sync = 2 * (k - 1) / k * grads / bw + 2 * math.ceil(math.log2(k)) * lat
    for r in res.ranks:
        assert r.compute_s == pytest.approx(compute, rel=1e-12)
        assert r.comm_s == pytest.approx(comm, rel=1e-12)
    assert res.step_time_s == pytest.approx(compute + comm + sync, rel=1e-12)


def one_ring_plan(length: int = 64_000, k: int = 4):
    return make_plan([length], k, length // k + 8, COST, strategy="hdp-naive")


def test_ring_comm_exposed_when_transfer_dominates():
    plan = one_ring_plan()
    slow = Cluster(4, gpus_per_node=1, inter_gbps=0.1)  # every neighbour on another node, a slow NIC
    res = simulate_step(plan, COST, slow)
    assert all(r.comm_s > 0 for r in res.ranks)
    fast = Cluster(4, gpus_per_node=1, inter_gbps=1e6, inter_latency_s=0.0)
    res_fast = simulate_step(plan, COST, fast)
    assert all(r.comm_s == 0 for r in res_fast.ranks)
    assert res.step_time_s > res_fast.step_time_s


def test_long_ring_hides_transfer_under_attention():
    # 2M tokens on 8 ranks: 256K-token blocks, attention per block step far exceeds the KV transfer.
    plan = one_ring_plan(2**21, 8)
    res = simulate_step(plan, COST, Cluster(8))
    assert all(r.comm_s == 0 for r in res.ranks)


def _ring_wait_plan():
    draft = Draft([30_000, 40_000], 2, 20_008)
    draft.ranks[0].append(draft.seq_micro_batch([0]))  # rank 0 is busy first ...
    g = draft.new_ring(1, [0, 1])                        # ... so rank 1 waits at the ring
    for r in (0, 1):
        draft.ranks[r].append(DraftMicroBatch(rings=[g], token_limit=20_008))
    return draft.finish("test", COST)


def test_idle_at_ring_wait_and_breakdown_adds_up():
    plan = _ring_wait_plan()
    res = simulate_step(plan, COST, Cluster(2))
    first = res.times[0][0].total_s
    assert res.ranks[0].ring_wait_s == 0
    assert math.isclose(res.ranks[1].ring_wait_s, first, rel_tol=1e-9)
    for r in res.ranks:
        parts = r.compute_s + r.comm_s + r.ring_wait_s + r.pp_bubble_s + r.dp_bubble_s + res.grad_sync_s
        assert math.isclose(parts, res.step_time_s, rel_tol=1e-9)


def test_one_f_one_b_uniform_bubble():
    m, p, t = 6, 4, 1.0
    span = one_f_one_b([t / 3] * m, [2 * t / 3] * m, p)
    assert math.isclose(span, (m + p - 1) * t)
    assert one_f_one_b([1.0], [2.0], 1) == 3.0


def test_pp_bubble_in_step():
    cost = build_cost_model("llama-7b", pp=4)
    plan = make_plan([5000] * 16, 2, 8000, cost, "hdp-balance")
    res = simulate_step(plan, cost, Cluster(8, pp=4))
    assert all(r.pp_bubble_s > 0 for r in res.ranks)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["simulate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


SMALL = ("--gpus", "16", "--tokens", "300000", "--max-len", "65536")


def test_all_strategies_json(capsys):
    code, out, _ = run_cli(capsys, *SMALL, "--json", "--steps", "2")
    assert code == 0
    d = json.loads(out)
    assert "simulation_time_s" in d
    table = d["strategies"]
    assert list(table) == ["static", "pow2", "hdp-naive", "hdp-offload", "hdp", "hdp-balance", "hdp-wide", "auto"]
    # The joint floor (hdp.plan.floor, + sync) is plan-independent and at least the area floor.
    assert d["joint_floor_s"] >= table["auto"]["area_floor_s"] * (1 - 1e-12)
    static = table["static"]["step_time_s"]
    for name, row in table.items():
        assert row["speedup_vs_static"] == pytest.approx(static / row["step_time_s"], rel=1e-12)
        assert row["compute_frac"] + row["exposed_comm_frac"] + row["idle_frac"] == pytest.approx(1.0, rel=1e-9)
        assert row["tokens_per_s"] == pytest.approx(d["tokens_per_step"] / row["step_time_s"], rel=0.2)  # 2 steps
        assert 0 < row["mfu"] < 1
        if name in ("hdp-naive", "hdp-balance"):  # fewest ranks, no offloading: what the bound covers
            assert row["step_time_s"] > row["lower_bound_s"]


@pytest.mark.parametrize("dist", ["byted", "github"])
def test_the_area_floor_bounds_every_strategy_and_lies_under_the_fewest_ranks_bound(dist):
    from hdp.data.synthetic import sample_lengths
    from hdp.sim.compare import simulate

    cluster = Cluster(128)
    capacity = COST.derived_capacity(cluster.num_ranks)
    lengths = sample_lengths(dist, 2**22, 2**19, 1)
    sim = simulate([lengths], cluster, COST, capacity, ["static", "pow2", "hdp", "hdp-wide"], 2**19,
                   ring_algo="two-level")
    for name, row in sim.table.items():
        assert row["area_floor_s"] <= row["step_time_s"], name
        assert row["area_floor_s"] <= row["lower_bound_s"], name
        assert row["gap_to_area_floor"] == pytest.approx(row["step_time_s"] / row["area_floor_s"])
    assert len({row["area_floor_s"] for row in sim.table.values()}) == 1  # plan-independent


def test_a_strategy_that_cannot_hold_the_batch_is_skipped_with_a_note(capsys):
    code, out, _ = run_cli(capsys, "--gpus", "64", "--tokens", "4000000", "--max-len", "2097152", "--json")
    assert code == 0
    d = json.loads(out)
    assert set(d["strategies"]) == {"hdp-offload", "hdp", "hdp-wide", "auto"}  # only offloading holds 2M tokens on 64 GPUs
    assert set(d["skipped"]) == {"static", "pow2", "hdp-naive", "hdp-balance"}
    assert "raise --gpus" in d["skipped"]["static"] and d["strategies"]["hdp"]["speedup_vs_static"] is None
    code, out, _ = run_cli(capsys, "--gpus", "64", "--tokens", "4000000", "--max-len", "2097152")
    assert code == 0 and "static: skipped, sequence" in out


def test_table_and_plots(capsys, tmp_path):
    code, out, _ = run_cli(capsys, *SMALL, "--strategies", "static,hdp", "--tp", "2", "--pp", "2",
                           "--plot", str(tmp_path))
    assert code == 0
    assert "static" in out and "hdp" in out
    assert (tmp_path / "gantt-hdp.png").stat().st_size > 0
    assert (tmp_path / "breakdown.png").stat().st_size > 0


@pytest.mark.parametrize("argv, flag", [
    (("--strategies", "static,magic"), "--strategies"),
    (("--gpus", "10", "--tp", "4"), "--gpus"),
    (("--pp", "64"), "--pp"),
    (("--tp", "3"), "--tp"),
    (("--gpus", "2", "--capacity", "1000"), "--gpus"),
    (("--steps", "0"), "--steps"),
])
def test_bad_input_exits_2(capsys, argv, flag):
    code, _, err = run_cli(capsys, *SMALL, *argv)
    assert code == 2
    assert flag in err and len(err.strip().splitlines()) == 1


def test_unknown_model_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--model", "gpt-9"])
    assert e.value.code == 2
    assert "--model" in capsys.readouterr().err


def test_no_torch_imported():
    import subprocess

    code = ("import sys, hdp.commands.simulate, hdp.sim.plot; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_ranks_instead_of_gpus_and_old_spellings(capsys):
    code, out, _ = run_cli(capsys, "--ranks", "8", "--tp", "2", "--stages", "1", "--tokens", "300000",
                           "--max-seq-len", "65536", "--cost-model", "h100-sxm-80gb", "--strategies", "hdp", "--json")
    assert code == 0
    d = json.loads(out)
    assert (d["gpus"], d["num_ranks"]) == (16, 8)


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--steps", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip() == (
        "hdp simulate: error: argument --steps: invalid int value: 'x' (see hdp simulate --help)")
