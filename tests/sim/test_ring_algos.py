"""Exposed ring communication of one micro-batch, per ring algorithm, against sums written out by
hand from the link figures (a simulator that ignores the algorithm or the placement fails)."""

from __future__ import annotations

import math

import pytest

from hdp.plan import build_cost_model
from hdp.plan.schedule.draft import Draft
from hdp.plan.cost.topology import Topology
from hdp.sim import Cluster
from hdp.sim.microbatch import MicroBatchTimer

COST = build_cost_model("llama-7b")
M = COST.model
L = 2**15  # 32K tokens
NV, NIC = 10e9, 1e9  # slow links: transfers dominate, so every algorithm exposes something
NV_LAT, NIC_LAT = 3e-6, 7e-6
CLUSTER = Cluster(16, gpus_per_node=4, nvlink_gbps=10, inter_gbps=1, nvlink_latency_s=NV_LAT, inter_latency_s=NIC_LAT)


def exposed(algo: str, members: list[int]) -> float:
    draft = Draft([L], 16, L)
    g = draft.new_ring(0, members)
    for r in members:
        draft.ranks[r].append(draft.ring_micro_batch([g]))
    plan = draft.finish("test", COST, topology=Topology(4, algo, 10, 1, NV_LAT, NIC_LAT, M.num_kv_heads))
    assert plan.rings[0].algo == algo
    t = MicroBatchTimer(plan, COST, CLUSTER)(plan.ranks[members[0]].micro_batches[0])
    assert t.ring_by == ((algo, len(members), t.ring_comm_s),)
    return t.ring_comm_s


def by_hand(k: int) -> tuple[float, float, float]:
    """(K/V bytes a member sends per step, forward and backward attention of one block step)."""
    kv = (L / k) * 2 * (M.num_kv_heads * M.hidden_size // M.num_heads) * 2  # K and V, bf16
    p, h, dev = L / (2 * k), M.hidden_size, COST.device  # zig-zag pieces: tests/sim/test_sim.py's hand_tiles
    diag = 3.5 * 2 * h * p * p / (dev.attn_efficiency(p) * 1e12)
    full = 3.5 * 4 * h * p * p / (dev.attn_efficiency(math.sqrt(2) * p) * 1e12)
    attn = (2 * diag + full + (k - 1) * 2 * full) / k  # one member's layer, the mean of its k block steps
    return kv, _fwd_share() * attn, (1 - _fwd_share()) * attn


def _fwd_share() -> float:
    from hdp.plan.cost.cost_model import ATTN_FWD_SHARE
    return ATTN_FWD_SHARE


def pos(x: float) -> float:
    return max(0.0, x)


def test_flat_ring_inside_one_node_runs_at_nvlink_speed():
    kv, f, b = by_hand(4)
    want = COST.layers * 3 * (pos(NV_LAT + kv / NV - f) + pos(NV_LAT + 2 * kv / NV - b))
    assert want > 0
    assert math.isclose(exposed("flat", [0, 1, 2, 3]), want, rel_tol=1e-12)


def test_flat_ring_across_nodes_waits_for_one_nic_every_step():
    kv, f, b = by_hand(8)
    want = COST.layers * 7 * (pos(NIC_LAT + kv / NIC - f) + pos(NIC_LAT + 2 * kv / NIC - b))
    assert math.isclose(exposed("flat", list(range(8))), want, rel_tol=1e-12)
    # Spanning 4 nodes instead of 2 changes nothing for a flat ring: one NIC carries each step.
    assert math.isclose(exposed("flat", [0, 1, 4, 5, 8, 9, 12, 13]), want, rel_tol=1e-12)


def test_bidirectional_ring_moves_half_the_bytes_each_way():
    kv, f, b = by_hand(8)
    want = COST.layers * 7 * (pos(NIC_LAT + kv / 2 / NIC - f) + pos(NIC_LAT + kv / NIC - b))
    assert math.isclose(exposed("bidirectional", list(range(8))), want, rel_tol=1e-12)


@pytest.mark.parametrize("members,m,g", [(list(range(8)), 2, 4), ([0, 1, 4, 5, 8, 9, 12, 13], 4, 2)])
def test_two_level_ring_hides_each_outer_step_under_a_round_of_g_blocks(members, m, g):
    kv, f, b = by_hand(8)
    total = 0.0
    for num_bytes, blk in ((kv, f), (2 * kv, b)):
        inner = pos(NV_LAT + num_bytes / NV - blk)
        round_s = g * blk + (g - 1) * inner
        outer = pos(NIC_LAT + num_bytes / NIC - round_s)
        total += m * (g - 1) * inner + (m - 1) * outer
    got = exposed("two-level", members)
    assert math.isclose(got, COST.layers * total, rel_tol=1e-12)
    assert got < exposed("bidirectional", list(range(8))) < exposed("flat", list(range(8)))


def test_two_level_on_uneven_nodes_falls_back_to_flat():
    draft = Draft([L], 16, L)
    g = draft.new_ring(0, [0, 1, 2, 4, 5, 6, 7])  # 3 + 4 members
    for r in draft.ring_ranks[g]:
        draft.ranks[r].append(draft.ring_micro_batch([g]))
    plan = draft.finish("test", COST, topology=Topology(4, "two-level"))
    assert plan.rings[0].algo == "flat" and plan.gpus_per_node == 4


def test_simulate_json_gives_both_speedups_and_exposed_comm_by_algorithm(capsys):
    import json

    from hdp.cli import main

    code = main(["simulate", "--gpus", "32", "--gpus-per-node", "4", "--tokens", "600000", "--max-len", "131072",
                 "--strategies", "static,pow2,hdp", "--ring-algo", "two-level", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    d = json.loads(out)
    assert d["ring_algo"] == "two-level" and d["gpus_per_node"] == 4
    assert list(d["strategies"]) == ["static", "pow2", "hdp"]
    flat = d["static_flat"]["step_time_s"]
    for row in d["strategies"].values():
        assert row["speedup_vs_flat_static"] == pytest.approx(flat / row["step_time_s"], rel=1e-12)
        assert set(row["exposed_comm_s"]) <= {"flat", "two-level"}
        assert sum(row["exposed_comm_s"].values()) == pytest.approx(sum(row["exposed_comm_s_by_ring_size"].values()))
    assert d["strategies"]["static"]["step_time_s"] <= flat  # the same mesh with a better ring
    with pytest.raises(SystemExit) as e:  # argparse: one line, exit 2
        main(["simulate", "--gpus", "32", "--ring-algo", "sideways"])
    assert e.value.code == 2 and "--ring-algo" in capsys.readouterr().err


def test_plan_file_records_the_ring_algorithm_and_the_node_size(tmp_path, capsys):
    import json

    from hdp.cli import main
    from hdp.plan.validate import violations
    from hdp.plan import Plan

    out = tmp_path / "p.json"
    code = main(["plan", "--ranks", "32", "--gpus-per-node", "4", "--tokens", "600000", "--max-len", "131072",
                 "--ring-algo", "two-level", "--out", str(out), "--json"])
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    d = json.loads(out.read_text())
    assert d["gpus_per_node"] == 4
    plan = Plan.from_json(out.read_text())
    assert violations(plan) == []
    assert info["rings_by_algo"].get("two-level", 0) == sum(1 for r in plan.rings if r.algo == "two-level") > 0
