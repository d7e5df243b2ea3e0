"""Pipeline parallelism (``--pp``): the 1F1B schedule (pure) and the executor against one process.

Schedule: slots align a ring's micro-batch on all its pipelines; each stage's order is 1F1B; an
event-level simulation of random plans (every blocking wait: the previous event of the process, the
activation from the stage before, the gradient from the stage after, the ring's other members at the
same (stage, kind, slot)) always completes: no deadlock.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from hdp.runtime.pipeline.schedule import Event, bubble_fraction, slots, stage_order, tau


def test_slots_align_a_ring_micro_batch_and_pad_the_earlier_member():
    # rank 0: local, local, ring 0; rank 1: ring 0, local; rank 2: local
    got = slots([[(), (), (0,)], [(0,), ()], [()]])
    assert got == [[0, 1, 2], [2, 3], [0]]


def test_slots_refuse_rings_in_different_orders():
    import pytest

    with pytest.raises(ValueError, match="ordered differently"):
        slots([[(0,), (1,)], [(1,), (0,)]])


def test_stage_order_is_1f1b_with_warm_up_and_cool_down():
    names = lambda evs: " ".join(f"{e.kind}{e.slot}" for e in evs)  # noqa: E731
    assert names(stage_order(range(6), 0, 4)) == "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5"
    assert names(stage_order(range(6), 3, 4)) == "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5"
    assert names(stage_order(range(2), 1, 4)) == "F0 F1 B0 B1"  # warm-up min(P - s - 1, M)
    assert names(stage_order([0, 3], 0, 2)) == "F0 B0 F3 B3"  # an empty slot is no event


def test_tau_orders_every_dependency_forward():
    P = 4
    for s in range(P):
        for i in range(5):
            if s > 0:
                assert tau("F", s - 1, i, P) < tau("F", s, i, P)
            if s < P - 1:
                assert tau("B", s + 1, i, P) < tau("B", s, i, P)
    assert tau("F", P - 1, 2, P) < tau("B", P - 1, 2, P)


def test_bubble_fraction_is_the_planners_formula():
    assert bubble_fraction([[2.0, 2.0]], 1) == 0.0
    assert bubble_fraction([[1.0, 1.0, 2.0]], 2) == 2.0 / 6.0
    assert bubble_fraction([[1.0, 1.0, 2.0], [], [3.0]], 3) == (2 * 2.0 + 2 * 3.0) / (4.0 + 3.0 + 4.0 + 6.0)


def simulate(ring_lists: list[list[tuple[int, ...]]], stages: int) -> bool:
    """Run every (pipeline, stage) process's events, each only when what it blocks on is done; True if all finish."""
    sl = slots(ring_lists)
    order = {(r, s): stage_order(sl[r], s, stages) for r in range(len(ring_lists)) for s in range(stages)}
    head = {p: 0 for p in order}
    done: set[tuple[int, int, str, int]] = set()  # (rank, stage, kind, index)

    def ready(p: tuple[int, int], e: Event) -> bool:
        r, s = p
        if e.kind == "F" and s > 0:
            return (r, s - 1, "F", e.index) in done
        if e.kind == "B" and s < stages - 1:
            return (r, s + 1, "B", e.index) in done
        return True

    def partners(p: tuple[int, int], e: Event) -> list[tuple[tuple[int, int], Event]]:
        """Every process the event's ring attention meets: same stage, kind and slot on the ring's members."""
        rings = set(ring_lists[p[0]][e.index])
        out = []
        for r2, mbs in enumerate(ring_lists):
            for i2, rg in enumerate(mbs):
                if r2 != p[0] and rings & set(rg):
                    out.append(((r2, p[1]), Event(e.kind, sl[r2][i2], i2)))
        return out

    progress = True
    while progress:
        progress = False
        for p, events in order.items():
            if head[p] == len(events):
                continue
            e = events[head[p]]
            group = [(p, e), *partners(p, e)]
            if all(head[q] < len(order[q]) and order[q][head[q]] == f and ready(q, f) for q, f in group):
                for q, f in group:
                    done.add((*q, f.kind, f.index))
                    head[q] += 1
                progress = True
    return all(head[p] == len(events) for p, events in order.items())


@st.composite
def plans(draw):
    """Random ring lists obeying the plan's rule 5 (ring ids increase along every rank's list)."""
    n = draw(st.integers(1, 4))
    lists: list[list[tuple[int, ...]]] = [[] for _ in range(n)]
    ring = 0
    for _ in range(draw(st.integers(0, 10))):
        members = draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n))
        if len(members) == 1:
            lists[min(members)].append(())
        else:
            for r in members:
                lists[r].append((ring,))
            ring += 1
    return lists


@settings(max_examples=300, deadline=None)
@given(plans(), st.integers(1, 4))
def test_random_plans_schedules_never_deadlock(ring_lists, stages):
    assert simulate(ring_lists, stages)


def test_the_simulation_catches_a_deadlock():
    """Without the slot alignment (each list's own positions) this plan deadlocks at --pp 2: ring 1 is
    micro-batch 1 on rank 0 and 2 on rank 1, so the two pipelines' 1F1B orders meet its events in
    conflicting orders (a wait-for cycle through both pipelines' stages)."""
    import hdp.runtime.pipeline.schedule as schedule

    real = schedule.slots
    try:
        schedule.slots = lambda lists: [list(range(len(m))) for m in lists]  # no alignment
        globals()["slots"] = schedule.slots
        assert not simulate([[(0,), (1,)], [(0,), (), (1,)]], 2)
    finally:
        schedule.slots = real
        globals()["slots"] = real
    assert simulate([[(0,), (1,)], [(0,), (), (1,)]], 2)  # aligned: rank 0 waits one empty slot


# -- the executor over real processes (gloo, float64) against one process ------------------------------

import os  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from hdp.plan import get_model  # noqa: E402
from hdp.plan.types import MicroBatch, Plan, RankPlan, Ring, Segment, Sequence  # noqa: E402
from hdp.runtime.model.decoder import build_model  # noqa: E402
from hdp.runtime.parallel import groups as run_groups  # noqa: E402
from hdp.runtime.parallel.mesh import Mesh  # noqa: E402
from hdp.runtime.train.step import build_optimizer, train_step  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.runtime.test_train_step import LENGTHS, hand_batch  # noqa: E402

LR, MAX_GRAD_NORM = 1e-2, 0.5  # clipping active


def _plan(ranks: list[list[MicroBatch]], rings: tuple[Ring, ...] = ()) -> Plan:
    return Plan("test", len(ranks), 32, tuple(Sequence(i, n) for i, n in enumerate(LENGTHS)), rings,
                tuple(RankPlan(r, tuple(m)) for r, m in enumerate(ranks)))


def _mb(segs, rings=()) -> MicroBatch:
    return MicroBatch(tuple(Segment(*s) for s in segs), tuple(rings), 0.0, 32)


def one_rank_plan() -> Plan:
    """Every sequence whole on one rank, in 4 micro-batches (the single process, and the 1-pipeline run)."""
    return _plan([[_mb([(0, 0, 24)]), _mb([(1, 0, 10), (2, 0, 7)]), _mb([(3, 0, 5), (5, 0, 9)]), _mb([(4, 0, 13)])]])


def two_pipeline_plan() -> Plan:
    """Ring 0 (sequence 0, pieces of 6) is micro-batch 1 of rank 0 (2 in all) and 0 of rank 1 (4 in all):
    rank 1 runs it in slot 1 after an empty slot 0."""
    return _plan([[_mb([(1, 0, 10)]), _mb([(0, 0, 6), (0, 18, 24)], [0])],
                  [_mb([(0, 6, 12), (0, 12, 18), (3, 0, 5)], [0]), _mb([(4, 0, 13)]), _mb([(5, 0, 9)]),
                   _mb([(2, 0, 7)])]], (Ring(0, 0, (0, 1)),))


def _run(plan: Plan, model, opt, rank: int) -> list[tuple[float, float, float | None]]:
    out = []
    for _ in range(2):
        res = train_step(model, opt, plan, hand_batch(), rank=rank, group=None, device=torch.device("cpu"),
                         timeout_s=30, max_grad_norm=MAX_GRAD_NORM, lr=LR)
        out.append((res.loss, res.grad_norm, res.pp_bubble))
    return out


def _rank(rank: int, world: int, pp: int, model_name: str, zero: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    groups = run_groups.create_groups("gloo", 30.0, Mesh.for_world(world, 1, pp))
    run_groups.install(groups)
    model = build_model(get_model(model_name), dtype=torch.float64, device=torch.device("cpu"), seed=0,
                        recompute=zero == 0, stage=(groups.coord.stage, pp))
    opt = build_optimizer(model, LR, zero=zero, groups=groups)
    plan = one_rank_plan() if groups.mesh.hdp == 1 else two_pipeline_plan()
    steps = _run(plan, model, opt, groups.coord.hdp)
    torch.save({"steps": steps, "params": {n: p.detach().clone() for n, p in model.named_parameters()}},
               os.path.join(out_dir, f"rank{rank}.pt"))
    run_groups.install(None)
    dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.parametrize("world, model_name, zero", [(2, "tiny", 0), (4, "tiny", 1)])
@pytest.mark.timeout(120)
def test_pp2_equals_one_process(tmp_path, world, model_name, zero):
    """--pp 2 on 2 processes (one pipeline of 4 micro-batches, layers recomputed) and on 4 (two pipelines of 2 and
    4 micro-batches sharing a ring in different list positions; ZeRO-1 over each stage's pool of 2):
    loss and grad norm of both steps to 1e-9, every parameter after 2 steps to 1e-9."""
    mp.start_processes(_rank, args=(world, 2, model_name, zero, free_port(), str(tmp_path)), nprocs=world,
                       join=True, start_method="fork")
    model = build_model(get_model(model_name), dtype=torch.float64, device=torch.device("cpu"), seed=0)
    ref = _run(one_rank_plan(), model, build_optimizer(model, LR), 0)
    params: dict[str, torch.Tensor] = {}
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for (loss, norm, bubble), (rloss, rnorm, _) in zip(got["steps"], ref):
            assert loss == pytest.approx(rloss, rel=1e-9) and norm == pytest.approx(rnorm, rel=1e-9), rank
            assert 0.0 <= bubble < 1.0
        params.update(got["params"])  # each stage's own; the pipelines' copies are equal (checked below)
        for name, t in got["params"].items():
            torch.testing.assert_close(t, dict(model.named_parameters())[name].detach(), rtol=1e-9, atol=1e-12,
                                       msg=lambda m: f"rank {rank} {name}: {m}")
    assert set(params) == {n for n, _ in model.named_parameters()}  # the stages hold the whole model


# -- the stage model, the refusals, the metrics (one process) --------------------------------------------


def test_stage_models_hold_the_whole_models_values_and_compose_to_its_logits():
    """Each stage of --pp 3 on ``small`` (4 layers: 2, 1, 1) has HF's names and exactly the full init's values;
    chaining the stages' forwards gives the full model's logits bit for bit."""
    from tests.conftest import plain_attention

    cfg, cpu = get_model("small"), torch.device("cpu")
    full = build_model(cfg, dtype=torch.float64, device=cpu, seed=5, attention=plain_attention)
    values = dict(full.named_parameters())
    stages = [build_model(cfg, dtype=torch.float64, device=cpu, seed=5, attention=plain_attention, stage=(s, 3))
              for s in range(3)]
    assert [[n for n in m.state_dict() if n.endswith("input_layernorm.weight")] for m in stages] == [
        ["model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight"],
        ["model.layers.2.input_layernorm.weight"], ["model.layers.3.input_layernorm.weight"]]
    assert stages[0].lm_head is None and stages[1].model.embed_tokens is None and stages[2].model.norm is not None
    names = [n for m in stages for n, _ in m.named_parameters()]
    assert names == list(values)  # every parameter once, in the full model's order
    for m in stages:
        for n, p in m.named_parameters():
            assert torch.equal(p, values[n]), n
    from types import SimpleNamespace

    layout = SimpleNamespace(rings=(), spans=[SimpleNamespace(seq=0, start=0, end=12, pos_start=0, num_tokens=12)])
    tokens, positions = torch.randint(0, cfg.vocab_size, (12,)), torch.arange(12)
    x = tokens
    for m in stages:
        x = m(x, positions, layout)
    assert torch.equal(x, full(tokens, positions, layout))


@pytest.mark.parametrize("flags, message", [
    (["--pp", "3"], "model tiny has 2 layers"),
    (["--pp", "2", "--model", "tiny-moe"], "mixture-of-experts"),
    (["--pp", "2", "--offload"], "offloading"),
])
def test_pp_refuses_what_it_cannot_run_in_one_line(capsys, flags, message):
    from tests.run_cli import run_main

    nproc = "3" if flags[1] == "3" else "4"
    code, _, err = run_main(capsys, "train", "--nproc", nproc, "--steps", "1", "--model", "tiny", *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_metrics_record_has_the_measured_and_the_planned_bubble():
    from hdp.plan import build_cost_model
    from hdp.plan.estimate import micro_batch_times
    from hdp.runtime.observe.report import metrics_record
    from hdp.runtime.train.step import StepResult

    plan, cost = two_pipeline_plan(), build_cost_model(get_model("tiny"), pp=2)
    res = StepResult(loss=1.0, grad_norm=1.0, tokens=68, local_tokens=0, local_micro_batches=0, pp_bubble=0.3)
    rec = metrics_record(0, plan, res, 1.0, cost=cost)
    times = micro_batch_times(plan, cost)
    want = sum(max(t) for t in times) / (sum(max(t) for t in times) + sum(map(sum, times)))
    assert rec["pp_bubble"] == 0.3 and rec["pp_bubble_predicted"] == pytest.approx(want, rel=1e-12)
    assert "pp_bubble" not in metrics_record(0, plan, StepResult(1.0, 1.0, 68, 0, 0), 1.0, cost=cost)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(2, 400), min_size=1, max_size=14), st.integers(1, 5), st.integers(2, 4))
def test_the_planners_pp_plans_never_deadlock(lengths, ranks, stages):
    """Plans of the planner's ``pp`` balance mode (rings first, then packed micro-batches) simulate to the end."""
    from hdp.plan import build_cost_model, make_plan

    capacity = max(100, max(lengths) // ranks + 8)  # rings where a sequence is long, packing where short
    plan = make_plan(lengths, ranks, capacity, build_cost_model(get_model("small"), pp=stages))
    assert plan.pipeline_stages == stages
    assert simulate([[mb.rings for mb in rp.micro_batches] for rp in plan.ranks], stages)


@pytest.mark.dist
@pytest.mark.timeout(180)
def test_hdp_train_pp2_on_4_processes_equals_one_process(tmp_path):
    """The whole command (worker wiring, stage models, pool optimizer, world scalars, metrics): 2 pipelines
    with 3 and 2 micro-batches sharing 2 rings, loss and grad norm of one process to 1e-9, and the
    --export-hf of the stages (gathered on rank 0) holds every parameter of one process after 2 steps."""
    from safetensors.torch import load_file

    from hdp.runtime.config import TrainConfig
    from hdp.runtime.optim.lr_schedule import lr_at
    from hdp.runtime.train.run import Run
    from tests.runtime.test_train_cli import hdp_train, read_metrics

    flags = dict(model="tiny", dtype="float64", global_batch_tokens=700, max_seq_len=300, steps=2)
    metrics = tmp_path / "m.jsonl"
    proc = hdp_train("--nproc", "4", "--pp", "2", "--capacity", "160", "--no-progress", "--metrics", str(metrics),
                     "--export-hf", str(tmp_path / "hf"),
                     *(x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v))), timeout=170)
    assert proc.returncode == 0, proc.stderr
    records = read_metrics(metrics)
    assert [r["micro_batches_min"] for r in records] == [2, 3] and records[0]["micro_batches_max"] == 3
    assert all(r["rings"] >= 1 and r["tp"] == 1 and r["pp"] == 2 for r in records)
    assert all(0 <= r["pp_bubble"] < 1 and 0 < r["pp_bubble_predicted"] < 1 for r in records)
    cfg = TrainConfig(capacity=300, **flags)
    run = Run.from_config(cfg)
    model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=cfg.seed)
    opt = build_optimizer(model, cfg.lr, cfg.weight_decay)
    for step, rec in enumerate(records):
        lr = lr_at(step, lr=cfg.lr, steps=cfg.lr_steps, schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
                   min_lr=cfg.final_lr)
        res = train_step(model, opt, run.plan(step, 1), run.stream.batch(step), rank=0, group=None,
                         device=torch.device("cpu"), timeout_s=10, lr=lr, max_grad_norm=cfg.max_grad_norm)
        assert res.loss == pytest.approx(rec["loss"], rel=1e-9) and res.grad_norm == pytest.approx(rec["grad_norm"], rel=1e-9)
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(exported) == set(model.state_dict())
    for name, t in model.state_dict().items():
        torch.testing.assert_close(exported[name], t, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
