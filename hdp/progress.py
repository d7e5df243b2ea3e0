"""Progress a person can see while a command works: a rich bar on a terminal, plain lines in a log.

A log file (``> run.log``, nohup, SLURM, a pipe) sees nothing of a bar until the command ends, so a
long job looks hung: there, and wherever ``every`` asks for them, each finished unit is one plain
line, flushed at once. ``hdp train`` (steps, on stdout) and ``hdp simulate`` (strategy x step cells,
on stderr, so stdout stays machine output) share this one rule. No torch.
"""

from __future__ import annotations

import sys
from typing import Callable, TextIO


def elapsed(seconds: float) -> str:
    """``0:01:05``: hours, minutes, seconds."""
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


class Progress:
    """``total`` units; ``update`` after each finished one. Lines when ``stream`` is not a terminal
    (one per unit) or ``every`` is given (every ``every``-th and the last), else a bar on ``stream``."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, every: int | None = None,
                 start: int = 0, transient: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.total = total
        self.done = start
        """Units finished so far (a resumed run starts at the steps already done)."""
        self.every = every or (None if _is_terminal(self.stream) else 1)
        """Lines every N units; None draws the bar."""
        self._bar = None
        if self.every is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.description}"), TimeElapsedColumn(),
                            console=Console(file=self.stream), transient=transient)
            self._task = self._bar.add_task("", total=total, completed=start)
            self._bar.start()

    @property
    def lines(self) -> bool:
        """True when progress goes out as plain lines (no bar)."""
        return self._bar is None

    def update(self, done: int, description: str, line: Callable[[], str]) -> None:
        """``done`` units finished; the bar shows ``description``, a log gets ``line()`` when it is due."""
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, description=description)
        elif self.every is not None and (done % self.every == 0 or done == self.total):
            print(line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stream-like object: no terminal
        return False
