"""``hdp train --tensorboard DIR``: the event file, read back with TensorBoard's own reader, holds
every numeric metric of every step, equal to the metrics JSONL (to float32, TensorBoard's scalars)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from hdp.cli import main  # noqa: E402
from hdp.runtime.observe.tensorboard import TensorBoardLog, scalars  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.timeout(60)
def test_every_numeric_key_becomes_a_scalar(tmp_path):
    records = [{"step": s, "loss": 5.0 / (s + 1), "rings": s, "strategy": "hdp", "micro_batches_min": 1,
                "micro_batches_max": 3 + s, "mfu": 0.125, "peak_mem_bytes": 2**30 + s} for s in range(3)]
    log = TensorBoardLog(str(tmp_path))
    for r in records:
        log.write(r)
    log.close()
    got = read_scalars(tmp_path)
    assert set(got) == {"loss", "rings", "micro_batches_min", "micro_batches_max", "mfu", "peak_mem_bytes",
                        "micro_batch_spread"}
    assert got["micro_batch_spread"] == [(s, 2.0 + s) for s in range(3)]
    assert [v for _, v in got["loss"]] == pytest.approx([5.0, 2.5, 5.0 / 3], rel=1e-7)
    assert scalars({"step": 1, "ok": True, "x": 2}) == {"x": 2.0}  # bools and the step are not scalars


@pytest.mark.dist
@pytest.mark.timeout(150)
def test_hdp_train_tensorboard_equals_the_metrics_file(tmp_path):
    metrics, tb = tmp_path / "m.jsonl", tmp_path / "tb"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "hdp.cli", "train", "--nproc", "2", "--steps", "2",
                           "--global-batch-tokens", "1024", "--capacity", "256", "--max-seq-len", "512",
                           "--no-progress", "--metrics", str(metrics), "--tensorboard", str(tb)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    got = read_scalars(tb)
    numeric = {k for k, v in records[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    expected = (numeric - {"step"}) | {"micro_batch_spread"}  # strings (strategy, dtypes) and nulls are no scalars
    assert {"loss", "grad_norm", "tokens_per_s", "mfu", "rings", "max_ring", "offloaded_bytes"} <= expected
    assert set(got) == expected
    for tag in expected:
        want = [(r["step"], r["micro_batches_max"] - r["micro_batches_min"] if tag == "micro_batch_spread" else r[tag])
                for r in records]
        assert [s for s, _ in got[tag]] == [s for s, _ in want], tag
        assert [v for _, v in got[tag]] == pytest.approx([float(v) for _, v in want], rel=1e-6), tag


@pytest.mark.timeout(30)
def test_unwritable_tensorboard_dir_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["train", "--tensorboard", str(blocker / "tb"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard: cannot create" in err and err.count("\n") == 1
