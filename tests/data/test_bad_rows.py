"""A data file with invalid rows: one line naming the file and the line, exit 2, nothing written,
whether it is trained on directly or prepared into a store first. Also ``--lr nan``: refused before
any process starts, and no (empty) metrics file left behind."""

from __future__ import annotations

import pytest

from hdp.cli import main

pytestmark = pytest.mark.timeout(60)

ROWS = {
    "bad-json": ('{"text": "fine"}\n{"text": oops}\n', "bad.jsonl:2 is not valid JSON"),
    "not-text": ('{"text": "fine"}\n\n{"text": 5}\n', "bad.jsonl:3: field 'text' holds int, not text"),
    "not-object": ('{"text": "fine"}\n[1, 2]\n', "bad.jsonl:2 is a JSON list, not an object"),
    "truncated": ('{"text": "fine"}\n{"text": "cut of', "bad.jsonl:2 is not valid JSON"),
    "no-field": ('{"text": "fine"}\n{"body": "x"}\n', "bad.jsonl:2 has no field 'text'"),
}


@pytest.mark.parametrize("command", ["train", "prepare"])
@pytest.mark.parametrize("case", list(ROWS))
def test_invalid_row_is_one_line_naming_file_and_line(case, command, tmp_path, capsys):
    content, needle = ROWS[case]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    out = tmp_path / "out"
    if command == "train":
        argv = ["train", "--data", str(bad), "--nproc", "2", "--steps", "1", "--no-progress", "--metrics", str(out)]
    else:
        argv = ["data", "prepare", str(bad), "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not out.exists()  # no partial metrics file or store


def test_lr_nan_is_refused_before_any_file_is_written(tmp_path, capsys):
    metrics = tmp_path / "m.jsonl"
    assert main(["train", "--lr", "nan", "--metrics", str(metrics)]) == 2
    err = capsys.readouterr().err
    assert err == "hdp train: error: --lr must be a finite number > 0, got nan\n"
    assert not metrics.exists()
