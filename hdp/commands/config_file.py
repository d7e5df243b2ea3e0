"""Run configs for any subcommand: ``--config run.toml`` beneath the command line, ``--print-config``.

The file's keys are the command's flag names without ``--`` (``global-batch-tokens = 65536``; an
alias such as ``tokens`` works too). Tables only group keys for people: ``[data]`` holding
``data = "corpus.jsonl"`` is ``--data corpus.jsonl``; a table's name is free and a key means the
same flag in whichever table it sits. Flags on the command line override the file. Each value is
checked against the flag's own argparse action (its ``type``, ``choices``, store_true), so a new
flag works in a file without code here. ``--print-config`` writes every flag's effective value as
TOML and exits: ``--print-config > run.toml`` then ``--config run.toml`` parses to the same
namespace (docs/config.md).
"""

from __future__ import annotations

import argparse
import difflib
import math
import sys
from contextlib import contextmanager
from typing import Any, Iterator

NOT_IN_FILES = ("help", "version", "config", "print_config")
"""Dests a config file neither sets nor records."""

EFFECTIVE_CONFIG = "effective_config"
"""The namespace attribute holding the effective flags as TOML (what ``--print-config`` prints)."""


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    command = p.prog
    p.add_argument("--config", metavar="TOML", default=None,
                   help="read flags from this TOML file: keys are flag names without -- (tables only group them); "
                        f"flags on the command line override it (docs/config.md). {command} @FILE reads flags from "
                        "a plain args file")
    p.add_argument("--print-config", action="store_true",
                   help=f"print the effective flags as TOML and exit ({command} --config FILE replays them)")


# -- what the parser offers ---------------------------------------------------------------------------
def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option name without ``--`` (aliases included) -> its action, for the actions a file may set."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in NOT_IN_FILES or not action.option_strings:
            continue
        for s in action.option_strings:
            if s.startswith("--"):
                out[s[2:]] = action
    return out


def documented_name(action: argparse.Action) -> str:
    """The first long spelling of a flag, without ``--``: the name ``--help`` and ``--print-config`` use."""
    return next(s[2:] for s in action.option_strings if s.startswith("--"))


# -- reading a file -----------------------------------------------------------------------------------
class ConfigError(ValueError):
    """A config file that cannot be used: the message names the file and the key."""


def _flatten(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every leaf; tables group keys, their names carry no meaning."""
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, full + ".")
        else:
            yield full, value


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array"}.get(
        type(value), type(value).__name__)


def _typed(action: argparse.Action, name: str, value: Any, where: str) -> Any:
    """``value`` as the action would store it from the command line (``--name``), or ConfigError."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {_kind(value)} ({value!r})")
        negated = isinstance(action, argparse._StoreFalseAction) or (
            isinstance(action, argparse.BooleanOptionalAction) and name.startswith("no-"))
        return not value if negated else value
    if type(action) is not argparse._StoreAction:
        raise ConfigError(f"{where} cannot be set in a config file; give it on the command line")
    if action.nargs not in (None, "?"):
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be an array, got {_kind(value)} ({value!r})")
        return [_scalar(action, v, where) for v in value]
    return _scalar(action, value, where)


def _scalar(action: argparse.Action, value: Any, where: str) -> Any:
    kind = action.type
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value, want = (float(value) if ok else value), "a number"
    elif kind is None or kind is str:
        ok, want = isinstance(value, str), "a string"
    else:  # a parsing function: it reads the same text the command line would give it
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {_kind(value)} ({value!r})")
        try:
            value, ok = kind(value), True
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
    if not ok:
        raise ConfigError(f"{where} must be {want}, got {_kind(value)} ({value!r})")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def load_config(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """The file's values by dest, typed through each flag's action; ConfigError names the key and file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ConfigError("--config needs Python 3.11 or newer (the standard library's tomllib)") from None
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    options = _options(parser)
    values: dict[str, Any] = {}
    key_of: dict[str, str] = {}
    for key, value in _flatten(doc):
        name = key.rsplit(".", 1)[-1]
        action = options.get(name)
        if action is None:
            near = difflib.get_close_matches(name.replace("_", "-"), list(options), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; see {parser.prog} --help"
            raise ConfigError(f"{path}: unknown key {key!r}: not a flag of {parser.prog}{hint}")
        if action.dest in values:
            raise ConfigError(f"{path}: {key_of[action.dest]!r} and {key!r} both set --{documented_name(action)}; "
                              "keep one")
        values[action.dest] = _typed(action, name, value, f"{path}: key {key!r}")
        key_of[action.dest] = key
    for group in parser._mutually_exclusive_groups:
        given = [key_of[a.dest] for a in group._group_actions if a.dest in values]
        if len(given) > 1:
            raise ConfigError(f"{path}: {' and '.join(map(repr, given))} are alternatives; keep one")
    return values


# -- parsing with a file beneath ----------------------------------------------------------------------
_UNSET = object()


@contextmanager
def _optional(parser: argparse.ArgumentParser, dests: set[str]) -> Iterator[None]:
    """A required flag the file gives need not be on the command line."""
    changed = [a for a in parser._actions if a.required and a.dest in dests]
    for a in changed:
        a.required = False
    try:
        yield
    finally:
        for a in changed:
            a.required = True


def _config_path(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """``--config`` from the command line (or an @file) without parsing the rest."""
    pre = type(parser)(prog=parser.prog, add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    return known.config


def parse_command(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` over the ``--config`` file's values; ``--print-config`` prints them and exits."""
    if not any(a.dest == "config" for a in parser._actions):  # a command without run configs
        return parser.parse_args(argv)
    path = _config_path(parser, argv)
    if path is None:
        args = parser.parse_args(argv)
    else:
        try:
            values = load_config(parser, path)
        except ConfigError as e:
            parser.error(str(e))
        with _optional(parser, set(values)):
            given = vars(parser.parse_args(argv, argparse.Namespace(**{a.dest: _UNSET for a in parser._actions})))
            for group in parser._mutually_exclusive_groups:  # the command line's choice replaces the file's
                if any(given.get(a.dest, _UNSET) is not _UNSET for a in group._group_actions):
                    for a in group._group_actions:
                        values.pop(a.dest, None)
            args = parser.parse_args(argv, argparse.Namespace(**values))
    setattr(args, EFFECTIVE_CONFIG, to_toml(parser, args))
    if getattr(args, "print_config", False):
        sys.stdout.write(getattr(args, EFFECTIVE_CONFIG))
        parser.exit(0)
    return args


# -- writing ------------------------------------------------------------------------------------------
def to_toml(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Every flag's value in ``args`` as TOML, in ``--help`` order; unset (None) flags are left out,
    which is what their absence means when the file is read back."""
    from hdp import __version__

    lines = [f"# {parser.prog} (hdp {__version__}): the effective flags; {parser.prog} --config FILE replays them"]
    for action in parser._actions:
        if action.dest in NOT_IN_FILES or not action.option_strings or not hasattr(args, action.dest):
            continue
        if not isinstance(action, (argparse._StoreAction, argparse._StoreTrueAction, argparse._StoreFalseAction,
                                   argparse.BooleanOptionalAction)):
            continue
        value = getattr(args, action.dest)
        if value is None:
            continue
        if isinstance(action, argparse._StoreFalseAction):
            value = not value
        lines.append(f"{documented_name(action)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # the shortest text that reads back as the same float
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def _toml_string(text: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped (tab may stay)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch != "\t" and (ord(ch) < 0x20 or ord(ch) == 0x7F):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
