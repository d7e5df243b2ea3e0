"""One vocabulary across commands: a spelling means one flag everywhere, differing defaults say why,
no abbreviations, errors name the subcommand, old spellings still work, ``hdp --help`` speaks to users."""

from __future__ import annotations

import argparse
from collections import defaultdict

import pytest

from tests.run_cli import run_main
from hdp.cli import COMMANDS, command_parser, top_parser
from hdp.commands.config_file import documented_name, parse_command


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser ``hdp`` has, by prog: the top one, each command's and the nested ones (hdp data prepare)."""
    out = {"hdp": top_parser()}
    todo = [command_parser(name)[0] for name in COMMANDS]
    while todo:
        p = todo.pop()
        out[p.prog] = p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += list(a.choices.values())
    return out


def flags_by_spelling() -> dict[str, dict[str, argparse.Action]]:
    """``--spelling`` -> {command prog: the action it names there}."""
    out: dict[str, dict[str, argparse.Action]] = defaultdict(dict)
    for prog, p in all_parsers().items():
        for a in p._actions:
            for s in a.option_strings:
                if s.startswith("--") and a.dest not in ("help", "version"):
                    out[s][prog] = a
    return out


def test_a_spelling_is_the_same_flag_with_the_same_aliases_in_every_command():
    bad = []
    for spelling, where in flags_by_spelling().items():
        names = {prog: tuple(a.option_strings) for prog, a in where.items()}
        if len(set(names.values())) > 1:
            bad.append(f"{spelling}: {names}")
    assert not bad, "\n".join(bad)


def test_different_defaults_for_one_flag_say_why_in_each_help():
    """Where commands default one flag differently, each command's help names another command whose
    default differs (``hdp plan`` plans a production cluster, ``hdp train`` runs on this machine)."""
    bad = []
    seen = set()
    for where in flags_by_spelling().values():
        actions = {prog: a for prog, a in where.items()}
        key = tuple(sorted((prog, id(a)) for prog, a in actions.items()))
        if key in seen:
            continue
        seen.add(key)
        for prog, a in actions.items():
            others = [q for q, b in actions.items() if q != prog and b.default != a.default]
            if others and not any(q in (a.help or "") for q in others):
                bad.append(f"{prog} --{documented_name(a)} (default {a.default!r}): help names none of {others}")
    assert not bad, "\n".join(bad)


def test_the_documented_names():
    """The names the issue settled: --global-batch-tokens (alias --tokens), --ranks (alias --nproc), --max-len."""
    where = flags_by_spelling()
    for spelling, documented in (("--tokens", "global-batch-tokens"), ("--nproc", "ranks"),
                                 ("--max-seq-len", "max-len")):
        assert {documented_name(a) for a in where[spelling].values()} == {documented}
    assert {"hdp plan", "hdp simulate", "hdp train"} <= set(where["--global-batch-tokens"])


@pytest.mark.parametrize("command, old, new", [
    ("train", ["--tokens", "512", "--nproc", "2", "--max-seq-len", "256"],
     ["--global-batch-tokens", "512", "--ranks", "2", "--max-len", "256"]),
    ("plan", ["--tokens", "100000", "--nproc", "8", "--max-seq-len", "4096", "--stages", "2",
              "--cost-model", "h100-sxm-80gb"],
     ["--global-batch-tokens", "100000", "--ranks", "8", "--max-len", "4096", "--pp", "2",
      "--profile", "h100-sxm-80gb"]),
    ("simulate", ["--tokens", "100000", "--nproc", "8"], ["--global-batch-tokens", "100000", "--ranks", "8"]),
])
def test_old_spellings_parse_to_the_same_namespace(command, old, new):
    parser, _ = command_parser(command)
    a, b = parse_command(parser, old), parse_command(parser, new)
    assert vars(a) == vars(b)
    assert vars(a) != vars(parse_command(parser, []))


def test_no_parser_takes_abbreviations():
    assert all(not p.allow_abbrev for p in all_parsers().values())


@pytest.mark.parametrize("argv, error", [
    (["simulate", "--step", "3"], "hdp simulate: error: unrecognized arguments: --step 3"),
    (["train", "--step", "3"], "hdp train: error: unrecognized arguments: --step 3"),
    (["plan", "--rank", "8"], "hdp plan: error: unrecognized arguments: --rank 8"),
    (["train", "--bogus"], "hdp train: error: unrecognized arguments: --bogus (see hdp train --help)"),
    (["plan", "--ranks", "x"], "hdp plan: error: argument --ranks/--nproc: invalid int value: 'x'"),
    (["calibrate"], "hdp calibrate: error: the following arguments are required: --out"),
    (["data", "prepare", "--bogus"], "hdp data prepare: error: the following arguments are required"),
    (["data", "prepare", "in", "--out", "x", "--bogus"], "hdp data prepare: error: unrecognized arguments: --bogus"),
    (["bogus"], "hdp: error: argument COMMAND: invalid choice: 'bogus'"),
])
def test_usage_errors_are_one_line_naming_the_subcommand(argv, error, capsys):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(error), err
    assert err.count("\n") == 1


def test_hdp_help_speaks_to_users(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    assert "hdp trains language models" in out and "``" not in out  # not the module's docstring
    for name, (_, help_text) in COMMANDS.items():
        assert name in out and help_text.split(":")[0] in out
    assert "examples:" in out and "hdp train --config run.toml" in out
    code, out, err = run_main(capsys)  # no command: the same help, and a non-zero status
    assert code == 2 and "hdp trains language models" in out
