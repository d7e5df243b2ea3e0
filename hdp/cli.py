"""``hdp`` command line: subcommands map to typed functions in ``hdp.commands``.

Subcommand modules are imported only when chosen, so ``hdp plan`` never imports torch.
User errors print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "plan": ("hdp.commands.plan", "plan one global batch and write a hdp.plan/1 file"),
    "train": ("hdp.commands.train", "train on the planned meshes (local CPU processes or torchrun)"),
    "simulate": ("hdp.commands.simulate", "time plans of every strategy on a virtual cluster"),
    "calibrate": ("hdp.commands.calibrate", "measure the local device and write a profile for --profile"),
    "plot": ("hdp.commands.plot", "draw a length distribution, a plan or a training run (PNG)"),
    "data": ("hdp.commands.data", "prepare a dataset: tokenize once into a memory-mapped token store"),
}


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do."""


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line on stderr (the usage itself is under ``--help``), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from hdp import __version__

    parser = OneLineParser(prog="hdp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hdp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:
            try:
                modules[name] = importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name and e.name.startswith("hdp"):
                    print(f"hdp: '{name}' is not available in this installation", file=sys.stderr)
                    return 2
                raise
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except (UserError, ValueError) as e:
        print(f"hdp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hdp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
