"""The simulator: event-model sanity, CLI output and errors. Pure Python, no torch, fast."""

from __future__ import annotations

import json
import math
import sys

import pytest

from hdp.cli import main
from hdp.plan import build_cost_model, make_plan
from hdp.plan.draft import Draft, DraftMicroBatch
from hdp.sim import Cluster, simulate_step
from hdp.sim.pipeline import one_f_one_b

COST = build_cost_model("llama-7b")


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
    plan = make_plan([5000] * 16, 2, 8000, cost, strategy="hdp", balance="pp")
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
    assert set(d["strategies"]) >= {"static", "pow2", "hdp-naive", "hdp-offload", "hdp"}
    for row in d["strategies"].values():
        for key in ("step_time_s", "speedup_vs_static", "mfu", "exposed_comm_frac", "idle_frac", "lower_bound_s"):
            assert key in row and row[key] >= 0
        assert row["step_time_s"] >= row["lower_bound_s"] * 0.5
        assert 0 < row["mfu"] < 1
    assert d["strategies"]["static"]["speedup_vs_static"] == pytest.approx(1.0)


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
