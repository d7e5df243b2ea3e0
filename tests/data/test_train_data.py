"""``hdp train`` on your own data: a prepared store and the JSONL it came from give identical batches
and losses, and ``--dump-batches`` holds exactly what was trained on (the loss recomputed from the
dump by a plain single-process model equals the metrics' loss)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from hdp.data.batches import BatchStream
from hdp.data.load import load_training_data
from hdp.plan import get_model
from hdp.runtime.model.decoder import build_model
from tests.conftest import plain_attention, read_jsonl, reference_adamw, reference_step
from tests.data import files

pytestmark = pytest.mark.dist
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = ["--model", "tiny", "--dtype", "float64", "--seed", "3", "--steps", "2", "--global-batch-tokens", "768",
          "--max-seq-len", "256", "--capacity", "96", "--nproc", "3", "--no-progress"]
LR, MAX_GRAD_NORM = 3e-3, 1.0  # hdp train's defaults


def hdp(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "hdp.cli", *args], capture_output=True, text=True, timeout=150,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same data trained twice: from the JSONL file, and from a store prepared from it."""
    d = tmp_path_factory.mktemp("own-data")
    tok = files.write_bpe_tokenizer(str(d / "tok"))
    src = files.write_jsonl(str(d / "docs.jsonl"), files.texts(60, seed=4))
    prep = hdp("data", "prepare", src, "--out", str(d / "store"), "--tokenizer", tok, "--workers", "1", "--no-progress")
    assert prep.returncode == 0, prep.stderr
    out = {"store_path": str(d / "store")}
    for name, data in (("jsonl", src), ("store", str(d / "store"))):
        proc = hdp("train", *COMMON, "--data", data, "--tokenizer", tok, "--metrics", str(d / f"{name}.metrics"),
                   "--dump-batches", str(d / f"{name}.dump"))
        assert proc.returncode == 0, proc.stderr
        out[name] = (read_jsonl(d / f"{name}.metrics"), read_jsonl(d / f"{name}.dump"))
    return out


@pytest.mark.timeout(300)
def test_store_and_jsonl_give_identical_batches_and_losses(runs):
    (m_jsonl, d_jsonl), (m_store, d_store) = runs["jsonl"], runs["store"]
    assert d_jsonl == d_store
    assert max(r["max_ring"] for r in m_store) >= 2, "the batches must be split into rings"
    for a, b in zip(m_jsonl, m_store, strict=True):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"]


@pytest.mark.timeout(300)
def test_loss_recomputed_from_the_dump_equals_the_metrics(runs):
    metrics, dump = runs["store"]
    assert [r["step"] for r in dump] == [0, 1] and all(sum(map(len, r["documents"])) == 768 for r in dump)
    stream = BatchStream(load_training_data(runs["store_path"]).corpus, 768, 256, seed=3)  # the batches, in order
    assert [r["documents"] for r in dump] == [[list(b.read(i, 0, n)) for i, n in enumerate(b.lengths)]
                                              for b in map(stream.batch, range(2))]
    assert any(1 in doc for r in dump for doc in r["documents"]), "the tokenizer's BOS (<s> = 1) is in the data"
    # plain single process: every sequence attended on its own with a dense mask, the textbook loss
    model = build_model(get_model("tiny"), dtype=torch.float64, device=torch.device("cpu"), seed=3,
                        attention=plain_attention)
    opt = reference_adamw(model, LR)
    for rec, want in zip(dump, metrics, strict=True):
        for g in opt.param_groups:
            g["lr"] = want["lr"]  # the run's schedule (tests/runtime checks lr_at itself)
        got = reference_step(model, opt, [torch.tensor(doc) for doc in rec["documents"]], MAX_GRAD_NORM)
        loss, norm = got["loss"], got["grad_norm"]
        assert want["loss"] == pytest.approx(loss, rel=1e-12), f"step {rec['step']} loss"
        assert want["grad_norm"] == pytest.approx(norm, rel=1e-10), f"step {rec['step']} grad norm"
