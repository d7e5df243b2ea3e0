"""``hdp`` run in the test's own process (no interpreter start-up), shared by the CLI tests."""

from __future__ import annotations


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout, stderr of ``hdp ARGV``."""
    from hdp.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
