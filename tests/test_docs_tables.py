"""Every table of numbers in README.md and docs/*.md is what ``benchmarks/report.py`` renders from its
JSON in benchmarks/results/: a number edited by hand, or a JSON refreshed without re-rendering, fails."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_report():
    # by file, not by putting benchmarks/ on sys.path (its module names could shadow others)
    spec = importlib.util.spec_from_file_location("hdp_benchmarks_report", os.path.join(ROOT, "benchmarks", "report.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = load_report()


def copy_tree(dst) -> str:
    """README, docs and results in a scratch root, to break on purpose."""
    shutil.copy(os.path.join(ROOT, "README.md"), dst / "README.md")
    shutil.copytree(os.path.join(ROOT, "docs"), dst / "docs", ignore=shutil.ignore_patterns("img"))
    shutil.copytree(os.path.join(ROOT, "benchmarks", "results"), dst / "benchmarks" / "results")
    return str(dst)


def test_every_table_equals_what_its_json_renders():
    stale, unknown = report.refresh(ROOT, write=False)
    assert not unknown
    assert not stale, f"{stale}: run python benchmarks/report.py"


def test_every_renderer_has_a_table_in_the_docs():
    used = set()
    for rel in report.files(ROOT):
        with open(os.path.join(ROOT, rel)) as f:
            used |= {m.group(2) for m in report.MARKER.finditer(f.read())}
    assert used == set(report.TABLES)


def test_a_number_changed_by_hand_is_named_and_rewritten(tmp_path, capsys):
    root = copy_tree(tmp_path)
    path = os.path.join(root, "docs", "results.md")
    with open(path) as f:
        text = f.read()
    block = re.search(r"<!-- table:ablation -->\n(.*?)<!-- /table -->", text, re.S).group(1)
    digit = re.search(r"\| \d", block)
    assert digit, "the ablation table has no number to change"
    i = text.index(block) + digit.end() - 1
    tampered = text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]
    with open(path, "w") as f:
        f.write(tampered)
    assert report.main(["--check", "--root", root]) == 1
    assert "docs/results.md: table ablation differs from its JSON" in capsys.readouterr().err
    assert report.main(["--root", root]) == 0
    with open(path) as f:
        assert f.read() == text
    assert report.main(["--check", "--root", root]) == 0


def test_a_refreshed_json_makes_its_table_stale(tmp_path):
    root = copy_tree(tmp_path)
    path = os.path.join(root, "benchmarks", "results", "sim_ablation.json")
    with open(path) as f:
        data = json.load(f)
    data["strategies"]["hdp"]["step_time_s"] *= 1.01  # a new measurement
    with open(path, "w") as f:
        json.dump(data, f)
    stale, _ = report.refresh(root, write=False)
    assert stale == ["docs/results.md: table ablation"]


def test_a_missing_json_says_so_instead_of_showing_numbers(tmp_path):
    root = copy_tree(tmp_path)
    os.remove(os.path.join(root, "benchmarks", "results", "sim_ablation.json"))
    block = report.render(report.TABLES["ablation"], root)
    assert "not measured yet" in block and "|" not in block
    assert "python benchmarks/sim_ablation.py" in block


def test_an_unknown_table_is_one_line_and_exit_2(tmp_path, capsys):
    root = copy_tree(tmp_path)
    with open(os.path.join(root, "docs", "extra.md"), "w") as f:
        f.write("<!-- table:no_such_table -->\n<!-- /table -->\n")
    assert report.main(["--check", "--root", root]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "docs/extra.md: table 'no_such_table'" in err


@pytest.mark.parametrize("values, text", [([1.234, 1.236], "1.23–1.24x"), ([2.0, 2.001], "2.00x")])
def test_span_is_a_range_unless_the_values_agree(values, text):
    assert report.span(values, unit="x") == text


def test_readme_is_a_front_door_starting_with_the_two_commands():
    """Issue 18: at most 250 lines, and the two commands first (.ci/run runs the second word for word)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        lines = f.read().splitlines()
    assert len(lines) <= 250
    first = [line.split("#")[0].strip() for line in lines[3:5]]
    assert first == ["pip install torch==2.13.0 -e . && hdp train", "pip install torch==2.13.0 -e '.[test]' && pytest -q"]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert first[1] in f.read()
