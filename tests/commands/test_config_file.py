"""``--config run.toml``, ``--print-config`` and ``@args.txt``: a file is the same run as its flags,
the printed config round-trips, and a bad file is one line naming the key and the file."""

from __future__ import annotations

import argparse

import pytest

from tests.run_cli import run_main
from hdp.cli import command_parser
from hdp.commands.config_file import EFFECTIVE_CONFIG, parse_command

CONFIG_DESTS = ("config", "print_config", EFFECTIVE_CONFIG)


def parse(command: str, *argv: str) -> argparse.Namespace:
    parser, _ = command_parser(command)
    return parse_command(parser, list(argv))


def flags_of(ns: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(ns).items() if k not in CONFIG_DESTS}


# Flags with values that test the TOML writer: quotes, backslashes, non-ASCII, tiny and long floats.
ROUND_TRIP = {
    "plan": ["--global-batch-tokens", "200000", "--max-len", "65536", "--ranks", "12", "--dist", "byted",
             "--capacity", "8192", "--out", 'a "quoted" dir\\plan é.json', "--json", "--pp", "2"],
    "simulate": ["--tokens", "100000", "--gpus", "64", "--strategies", "hdp,static", "--nvlink-gbps", "1e-20",
                 "--inter-latency-us", "0.1"],
    "train": ["--nproc", "2", "--model", "tiny", "--dtype", "float64", "--steps", "2", "--lr", "0.0001234567890123",
              "--data", "/data/x\ty.jsonl", "--no-progress", "--zero", "0", "--ring-algo", "flat"],
    "calibrate": ["--out", "dev.json", "--quick", "--threads", "3"],
}


@pytest.mark.parametrize("command", list(ROUND_TRIP))
def test_print_config_round_trips_to_the_same_namespace(command, tmp_path, capsys):
    code, printed, err = run_main(capsys, command, *ROUND_TRIP[command], "--print-config")
    assert code == 0, err
    path = tmp_path / "run.toml"
    path.write_text(printed)
    code, again, err = run_main(capsys, command, "--config", str(path), "--print-config")
    assert code == 0, err
    assert again == printed  # print -> load -> print is identical
    from_flags, from_file = parse(command, *ROUND_TRIP[command]), parse(command, "--config", str(path))
    assert flags_of(from_file) == flags_of(from_flags)
    assert getattr(from_file, EFFECTIVE_CONFIG) == getattr(from_flags, EFFECTIVE_CONFIG) == printed
    assert flags_of(from_flags) != flags_of(parse(command, *ROUND_TRIP[command][:-2]))  # the flags matter


def test_tables_group_keys_aliases_work_and_the_command_line_wins(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('steps = 3\ntokens = 2048\n[data]\ndata = "corpus.jsonl"\ntext-field = "body"\n'
                    '[optim.schedule]\nlr = 1\nlr-schedule = "linear"\n')
    ns = parse("train", "--config", str(path), "--steps", "5", "--global-batch-tokens", "512")
    assert (ns.steps, ns.global_batch_tokens, ns.data, ns.text_field) == (5, 512, "corpus.jsonl", "body")
    assert ns.lr == 1.0 and isinstance(ns.lr, float) and ns.lr_schedule == "linear"
    assert ns.model == "tiny"  # neither file nor command line: the default


def test_command_line_alternative_replaces_the_files(tmp_path):
    """``--lengths`` and ``--dist`` are alternatives: the command line's choice drops the file's."""
    path = tmp_path / "run.toml"
    path.write_text('lengths = "batch.txt"\n')
    ns = parse("plan", "--config", str(path), "--dist", "byted")
    assert ns.lengths is None and ns.dist == "byted"
    assert parse("plan", "--config", str(path)).lengths == "batch.txt"


def test_a_required_flag_may_come_from_the_file(tmp_path):
    path = tmp_path / "cal.toml"
    path.write_text('out = "dev.json"\nquick = true\n')
    ns = parse("calibrate", "--config", str(path))
    assert ns.out == "dev.json" and ns.quick is True
    with pytest.raises(SystemExit):  # and is still required without it
        parse("calibrate")


@pytest.mark.parametrize("text, needle", [
    ("stepz = 3\n", "unknown key 'stepz': not a flag of hdp train; did you mean 'steps'?"),
    ("[data]\npath = 'x'\n", "unknown key 'data.path': not a flag of hdp train"),
    ("global_batch_tokens = 3\n", "did you mean 'global-batch-tokens'?"),
    ('steps = "3"\n', "key 'steps' must be an integer, got a string ('3')"),
    ("steps = 2.5\n", "key 'steps' must be an integer, got a float (2.5)"),
    ("steps = true\n", "key 'steps' must be an integer, got a boolean (True)"),
    ("lr = 'fast'\n", "key 'lr' must be a number, got a string ('fast')"),
    ("data = 3\n", "key 'data' must be a string, got an integer (3)"),
    ("no-progress = 1\n", "key 'no-progress' must be true or false, got an integer (1)"),
    ("dtype = 'float16'\n", "key 'dtype': 'float16' is not one of float32, bfloat16, float64"),
    ("zero = 3\n", "key 'zero': 3 is not one of 0, 1, 2"),
    ("ranks = 2\nnproc = 3\n", "'ranks' and 'nproc' both set --ranks; keep one"),
    ("steps = [1, 2]\n", "key 'steps' must be an integer, got an array ([1, 2])"),
    ("config = 'other.toml'\n", "unknown key 'config'"),
    ("print-config = true\n", "unknown key 'print-config'"),
    ("steps = \n", "not valid TOML"),
])
def test_a_bad_key_or_value_is_one_line_naming_key_and_file(text, needle, tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text(text)
    code, out, err = run_main(capsys, "train", "--config", str(path), "--steps", "1")
    assert code == 2 and out == ""
    assert err.startswith(f"hdp train: error: {path}: ") and needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_alternatives_together_in_a_file_and_a_missing_file(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text('lengths = "a.txt"\ndist = "byted"\n')
    code, _, err = run_main(capsys, "plan", "--config", str(path))
    assert code == 2 and f"{path}: 'lengths' and 'dist' are alternatives; keep one" in err and err.count("\n") == 1
    code, _, err = run_main(capsys, "plan", "--config", str(tmp_path / "none.toml"))
    assert code == 2 and err.startswith("hdp plan: error: --config ") and "none.toml: cannot read it" in err


def test_args_file(tmp_path):
    """``@args.txt``: one or more shell-quoted arguments per line, ``#`` comments, a --config inside."""
    toml = tmp_path / "run.toml"
    toml.write_text("steps = 7\nseed = 3\n")
    args = tmp_path / "args.txt"
    args.write_text(f"--model tiny  # the CPU model\n--data 'my corpus.jsonl'\n--config\n{toml}\n--seed 4\n")
    ns = parse("train", f"@{args}", "--lr", "0.5")
    assert (ns.model, ns.data, ns.steps, ns.seed, ns.lr) == ("tiny", "my corpus.jsonl", 7, 4, 0.5)


def test_plan_from_a_config_file_is_the_plan_from_flags(tmp_path, capsys):
    import json

    flags = ["--global-batch-tokens", "200000", "--max-len", "65536", "--ranks", "12", "--capacity", "8192", "--json"]
    code, printed, err = run_main(capsys, "plan", *flags, "--print-config")
    assert code == 0, err
    path = tmp_path / "plan.toml"
    path.write_text(printed)
    _, a, _ = run_main(capsys, "plan", *flags)
    _, b, _ = run_main(capsys, "plan", "--config", str(path))
    assert json.loads(a)["fingerprint"] == json.loads(b)["fingerprint"]


TIMED = {"step_time_s", "tokens_per_s", "planning_time_s", "plan_wait_s", "tflops_per_device", "mfu", "peak_memory_bytes", "config"}
"""Record keys that depend on the clock or the allocator (and the config, compared on its own)."""


@pytest.mark.dist
@pytest.mark.timeout(150)
def test_train_from_a_config_file_is_the_run_from_flags_and_records_its_config(tmp_path, capsys):
    from hdp.runtime.checkpoint import files
    from tests.conftest import read_jsonl
    from tests.runtime.test_train_cli import hdp_train

    flags = ["--nproc", "2", "--model", "tiny", "--dtype", "float64", "--steps", "2", "--global-batch-tokens", "1024",
             "--max-len", "512", "--seed", "1", "--lr", "0.01", "--no-progress"]
    code, printed, err = run_main(capsys, "train", *flags, "--print-config")
    assert code == 0, err
    toml = tmp_path / "run.toml"
    toml.write_text(printed)
    runs = {}
    for name, argv in (("flags", flags), ("file", ["--config", str(toml)])):
        where = [f"--metrics={tmp_path / name}.jsonl", f"--save-dir={tmp_path / name}-ck"]
        proc = hdp_train(*argv, *where)
        assert proc.returncode == 0, proc.stderr
        _, want, _ = run_main(capsys, "train", *argv, *where, "--print-config")
        records = read_jsonl(tmp_path / f"{name}.jsonl")
        assert records[0]["config"] == want and all("config" not in r for r in records[1:])
        (ckpt,) = [path for _, path in files.complete_checkpoints(str(tmp_path / f"{name}-ck"))]
        assert files.read_manifest(ckpt)["run_config"] == want
        runs[name] = records
    assert [r["step"] for r in runs["file"]] == [0, 1]
    for a, b in zip(runs["flags"], runs["file"], strict=True):
        assert {k: v for k, v in a.items() if k not in TIMED} == {k: v for k, v in b.items() if k not in TIMED}
    one, two = runs["file"]
    assert one["loss"] != two["loss"]  # two real steps
