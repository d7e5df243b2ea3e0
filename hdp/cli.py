"""``hdp`` command line: subcommands map to typed functions in ``hdp.commands``.

Only the chosen subcommand's module is imported, so ``hdp plan`` never imports torch, and its
parser is the one that parses (its errors say ``hdp plan: error: ...``). User errors print one line
on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

COMMANDS = {
    "plan": ("hdp.commands.plan", "plan one global batch and write a hdp.plan/1 file"),
    "train": ("hdp.commands.train", "train on the planned meshes (local CPU processes or torchrun)"),
    "simulate": ("hdp.commands.simulate", "time plans of every strategy on a virtual cluster"),
    "calibrate": ("hdp.commands.calibrate", "measure the local device and write a profile for --profile"),
    "plot": ("hdp.commands.plot", "draw a length distribution, a plan or a training run (PNG)"),
    "data": ("hdp.commands.data", "prepare a dataset: tokenize once into a memory-mapped token store"),
}

ABOUT = """\
hdp trains language models on batches that mix a few very long sequences with many short ones:
every step it plans a new mesh, packing short sequences whole and giving each long one a ring of
exactly the ranks that hold it (Hybrid Data Parallelism)."""

EXAMPLES = """\
examples:
  hdp train                                   train the tiny model on 4 local CPU processes
  hdp plan --ranks 1024 --json                plan a 32M-token batch for 1,024 GPUs
  hdp simulate --gpus 1024                    every strategy's step time on a virtual cluster
  hdp train --config run.toml --steps 100     flags from a file, the command line on top (docs/config.md)
  hdp train ... --print-config > run.toml     write a run down to replay it

Run 'hdp COMMAND --help' for a command's flags."""


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do."""


class _SubCommands(argparse._SubParsersAction):
    """Arguments the chosen sub-parser does not know are its error (``hdp data prepare: error: ...``),
    not its parent's."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        super().__call__(parser, namespace, values, option_string)
        extras = getattr(namespace, argparse._UNRECOGNIZED_ARGS_ATTR, None)
        if extras:
            self.choices[values[0]].error(f"unrecognized arguments: {' '.join(extras)}")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line on stderr (the usage itself is under ``--help``), exit 2. No
    abbreviations (``--step`` is not ``--steps``); ``@FILE`` reads arguments from a file."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("fromfile_prefix_chars", "@")
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubCommands)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        """An @FILE line holds one or more shell-quoted arguments (``--steps 3``); ``#`` starts a comment."""
        try:
            return shlex.split(arg_line, comments=True)
        except ValueError as e:
            self.error(f"@FILE line {arg_line.strip()!r}: {e}")
            raise  # not reached: error exits


def top_parser() -> OneLineParser:
    """``hdp`` itself: what it is, the commands, examples."""
    from hdp import __version__

    commands = "\n".join(f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items())
    parser = OneLineParser(prog="hdp", usage="hdp [-h] [--version] COMMAND [flags]",
                           description=f"{ABOUT}\n\ncommands:\n{commands}", epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hdp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)  # listed above
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """The parser of ``hdp NAME`` and its module (ModuleNotFoundError for a part not installed)."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = OneLineParser(prog=f"hdp {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        args = top_parser().parse_args(argv)  # --help, --version, or an error naming the commands
        if args.command is None:
            top_parser().print_help()
            return 2
        top_parser().error(f"give the command first: hdp {args.command} [flags]")
    name = argv[0]
    try:
        parser, module = command_parser(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("hdp"):
            print(f"hdp {name}: error: '{name}' is not available in this installation", file=sys.stderr)
            return 2
        raise
    from hdp.commands.config_file import parse_command

    args = parse_command(parser, argv[1:])
    args.command = name
    try:
        return int(module.run(args) or 0)  # type: ignore[attr-defined]
    except (UserError, ValueError) as e:
        print(f"hdp {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hdp {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
