"""``hdp plot``: each picture is made from small inputs, is a 1200 x 700 PNG, and draws the input's data."""

from __future__ import annotations

import json

import pytest

from hdp.cli import main
from hdp.data.synthetic import sample_lengths
from hdp.plan import build_cost_model, make_plan
from hdp.plot.lengths import lengths_data
from hdp.plot.plan import plan_data
from hdp.plot.png import png_size
from hdp.plot.run import run_data

pytestmark = pytest.mark.timeout(60)
SIZE = (1200, 700)


def test_lengths_buckets_hold_the_inputs_tokens_and_attention(tmp_path):
    lengths = [1, 3, 3, 100, 1000, 1000, 70000]
    pic = lengths_data(lengths)
    assert pic.lows == (1, 2, 64, 512, 65536)  # buckets [2^i, 2^(i+1)) that hold a length
    assert pic.sequences == (1, 2, 1, 2, 1)
    assert pic.token_share[3] == pytest.approx(2000 / sum(lengths))
    pairs = [s * (s + 1) / 2 for s in lengths]
    assert pic.attention_share[-1] == pytest.approx(pairs[-1] / sum(pairs))  # the long tail holds the attention
    f = tmp_path / "l.txt"
    f.write_text("# lengths\n" + "\n".join(map(str, lengths)) + "\n")
    out = tmp_path / "lengths.png"
    assert main(["plot", "--lengths", str(f), "--out", str(out)]) == 0
    assert png_size(str(out)) == SIZE


@pytest.mark.parametrize("ranks, rows", [(8, 8), (1024, 64)])
def test_plan_picture_rows_bars_and_times_come_from_the_plan(ranks, rows, tmp_path):
    cost = build_cost_model("llama-7b")
    lengths = sample_lengths("byted", 2**18 if ranks == 8 else 2**24, 2**16 if ranks == 8 else 2**20, 0)
    capacity = 16384 if ranks == 8 else 8192
    plan = make_plan(lengths, ranks, capacity, cost, max_len=max(lengths))
    pic = plan_data(plan, cost)
    assert len(pic.row_labels) == rows and len(pic.finish) == rows
    assert pic.predicted_s == pytest.approx(plan.predicted_step_time_s, rel=1e-9)  # the planner's own estimate
    assert pic.lower_bound_s == pytest.approx(plan.lower_bound_s, rel=1e-9)
    assert max(pic.finish) == pytest.approx(pic.predicted_s)
    if ranks == 8:  # one bar per sequence of every micro-batch (a ring member's two pieces are one)
        shares = [(r.rank, seq) for r in plan.ranks for mb in r.micro_batches
                  for seq in dict.fromkeys(s.seq for s in mb.segments)]
        assert [(b.row, b.seq) for b in pic.bars] == shares
        for r, rp in enumerate(plan.ranks):  # the bars of a rank add up to its micro-batches' times
            mine = [b for b in pic.bars if b.row == r]
            if mine:
                assert mine[-1].start + mine[-1].width == pytest.approx(pic.finish[r])
        assert {b.ring for b in pic.bars if b.ring is not None} == set(range(len(plan.rings)))
    else:  # aggregated: 16 ranks per row; busy shares are fractions of rank-time
        assert pic.ranks_per_row == 16 and not pic.bars
        busy = [r + w for rr, wr in zip(pic.ring_share, pic.whole_share) for r, w in zip(rr, wr)]
        assert max(busy) <= 1 + 1e-9 and min(busy) >= 0
        assert pic.ring_boxes and all(size >= 32 for _, size, *_ in pic.ring_boxes)
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    out = tmp_path / "plan.png"
    assert main(["plot", str(path), "--out", str(out)]) == 0
    assert png_size(str(out)) == SIZE


def test_run_picture_plots_the_metrics(tmp_path):
    records = [{"step": i, "loss": 5.0 - 0.1 * i, "tokens_per_s": 1000.0 + i, "mfu": 0.01 * i} for i in range(6)]
    pic = run_data(records)
    assert pic.steps == tuple(range(6)) and pic.loss[-1] == pytest.approx(4.5) and pic.mfu[2] == pytest.approx(0.02)
    assert run_data([{k: v for k, v in r.items() if k != "mfu"} for r in records]).mfu is None
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "run.png"
    assert main(["plot", str(path), "--out", str(out)]) == 0
    assert png_size(str(out)) == SIZE


@pytest.mark.parametrize("content, args, message", [
    ("", ["--lengths", "IN"], "has no lengths"),
    ("12\nabc\n", ["--lengths", "IN"], "is not an integer length"),
    ('{"step": 0}\n', ["IN"], "a metrics record needs"),
    ('{"format": "hdp.plan/1"}', ["IN"], "malformed hdp.plan/1 file"),
    ("[1, 2]", ["IN"], "neither a hdp.plan/1 file"),
    ("5\n", ["--lengths", "IN", "IN"], "exactly one input"),
    ("5\n", ["--lengths", "IN", "--out-name-is-not-png"], "name it *.png"),
    ("5\n", ["--lengths", "IN", "--out-missing-dir"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2_and_no_file(content, args, message, tmp_path, capsys):
    f = tmp_path / "in.txt"
    f.write_text(content)
    out = tmp_path / "out.png"
    extra = ["--out", str(out)]
    if "--out-name-is-not-png" in args:
        extra, args = ["--out", str(tmp_path / "out.jpg")], args[:-1]
    if "--out-missing-dir" in args:
        extra, args = ["--out", str(tmp_path / "nope" / "out.png")], args[:-1]
    assert main(["plot", *[str(f) if a == "IN" else a for a in args], *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [f]  # no picture, no temporary file


def test_plot_never_imports_torch(tmp_path):
    import subprocess
    import sys

    f = tmp_path / "l.txt"
    f.write_text("5\n700\n")
    code = ("import sys; from hdp.cli import main; "
            f"rc = main(['plot', '--lengths', {str(f)!r}, '--out', {str(tmp_path / 'a.png')!r}]); "
            "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
