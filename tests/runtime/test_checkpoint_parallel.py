"""Checkpoints of ``--tp``/``--pp`` runs (issue 20): one tensor per (stage, TP index), resharded over HDP.

* key naming (one process): plain HDP keeps the keys of before, a coordinate gets ``stage{s}.tp{t}.``,
  its slice is the zero-1 shard of its own pool;
* ``--pp 2`` on 4 processes (2 HDP ranks), uninterrupted, saving every step; resumed from step 1 on 2
  processes (1 HDP rank, same P): losses and every exported parameter equal to 1e-12; the resumed run's
  ``--export-hf`` loads in ``AutoModelForCausalLM`` at hdp's loss; another P is one line, exit 2.
"""

from __future__ import annotations

import json

import pytest
import torch

from hdp.runtime.checkpoint import files
from hdp.runtime.checkpoint.coords import saved_for, shard_of
from hdp.runtime.parallel.mesh import Mesh
from tests.run_cli import run_main
from tests.runtime.test_train_cli import hdp_train, read_metrics

COMMON = ["--model", "tiny", "--dtype", "float64", "--seed", "3", "--global-batch-tokens", "700", "--max-seq-len",
          "300", "--no-progress", "--lr-schedule", "cosine", "--warmup-steps", "1", "--pp", "2"]
N = 3


def test_keys_name_the_coordinate_and_plain_hdp_keeps_the_old_keys():
    plain = Mesh(3)
    assert [shard_of(plain, plain.coord(r), r) for r in range(3)][2].key("master") == "master"
    mesh = Mesh(hdp=3, tp=2, pp=2)
    shards = [shard_of(mesh, mesh.coord(r), r) for r in range(mesh.world_size)]
    assert shards[mesh.rank(2, 1, 0)].key("exp_avg") == "stage1.tp0.exp_avg"
    assert {s.name for s in shards} == {"stage0.tp0", "stage0.tp1", "stage1.tp0", "stage1.tp1"}
    pool = [shards[r] for r in mesh.pool(1, 1)]  # one coordinate's pool cuts its numel like ZeRO-1 over 3
    assert [s.chunk(10) for s in pool] == [(0, 4), (4, 8), (8, 10)] and {s.size for s in pool} == {3}
    by_coord = {"layout": {"stage1.tp1": [["x", 0, 1, [1]]]}}
    assert saved_for(by_coord, "layout", pool[0]) == [["x", 0, 1, [1]]]
    assert saved_for(by_coord, "layout", shards[0]) is None  # a coordinate the checkpoint does not have
    assert saved_for({"layout": [["x", 0, 1, [1]]]}, "layout", shard_of(plain, plain.coord(0), 0)) == [["x", 0, 1, [1]]]


def _run(tmp_path, name: str, nproc: int, *args: str):
    metrics, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-hf"
    proc = hdp_train(*COMMON, "--nproc", str(nproc), "--steps", str(N), "--metrics", str(metrics),
                     "--export-hf", str(out), *args, timeout=200)
    assert proc.returncode == 0, proc.stderr
    return read_metrics(metrics), out


@pytest.mark.dist
@pytest.mark.timeout(420)
def test_pp2_checkpoint_resumes_on_another_hdp_count_exactly_and_exports(tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from hdp.plan import get_model
    from hdp.runtime.config import TrainConfig
    from hdp.runtime.model.decoder import build_model
    from hdp.runtime.train.run import Run
    from tests.runtime.test_hf_export import hf_loss, loss_at

    save = tmp_path / "ck"
    ref, ref_hf = _run(tmp_path, "ref", 4, "--capacity", "160", "--save-dir", str(save), "--save-every", "1", "--keep", str(N))
    step1 = files.step_dir(str(save), 1)
    manifest = json.load(open(step1 + "/hdp.json"))
    assert manifest["world_size"] == 4 and manifest["config"]["pp"] == 2
    assert sorted(manifest["layout"]) == ["stage0.tp0", "stage1.tp0"]  # one layout per coordinate
    assert set(manifest["numel"].values()) == {sum(e[2] for e in lay) for lay in manifest["layout"].values()}
    assert {e[0] for e in manifest["layout"]["stage0.tp0"]} >= {"model.embed_tokens.weight"}
    assert {e[0] for e in manifest["layout"]["stage1.tp0"]} >= {"lm_head.weight", "model.norm.weight"}

    got, got_hf = _run(tmp_path, "resumed", 2, "--capacity", "300", "--resume", step1, "--save-dir", str(tmp_path / "ck2"))
    assert [r["step"] for r in got] == list(range(1, N)) and max(r["max_ring"] for r in ref) == 2
    for r in got:  # 1 HDP rank now, 2 when saved: same T/P, other pool
        assert abs(r["loss"] - ref[r["step"]]["loss"]) <= 1e-12 * abs(ref[r["step"]]["loss"])
        assert abs(r["grad_norm"] - ref[r["step"]]["grad_norm"]) <= 1e-12 * abs(ref[r["step"]]["grad_norm"])
    a, b = load_file(str(ref_hf / "model.safetensors")), load_file(str(got_hf / "model.safetensors"))
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-12, atol=1e-14, msg=lambda m: f"{name}: {m}")

    cfg = TrainConfig(model="tiny", dtype="float64", seed=3, global_batch_tokens=700, max_seq_len=300, capacity=300)
    model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=3)
    model.load_state_dict(b)
    hf = AutoModelForCausalLM.from_pretrained(str(got_hf), local_files_only=True, attn_implementation="sdpa")
    batch = Run.from_config(cfg).stream.batch(N)
    assert hf_loss(hf, batch) == pytest.approx(loss_at(cfg, model, N), rel=1e-9)

    capsys.readouterr()  # transformers' loading bar above is not the refusal's output
    code, _, err = run_main(capsys, "train", *COMMON[:-2], "--nproc", "2", "--steps", str(N), "--resume", step1,
                            "--save-dir", str(tmp_path / "ck3"))
    assert code == 2 and "pp 2" in err and len(err.strip().splitlines()) == 1, err  # another P: one line
