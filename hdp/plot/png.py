"""Shared figure plumbing: a headless pyplot and an atomic PNG write (no partial file on failure)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

WIDTH_IN, HEIGHT_IN, DPI = 12.0, 7.0, 100
"""Every picture is 1200 x 700 pixels: readable in a README and a terminal image viewer alike."""


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(rows: int = 1, height_ratios: list[float] | None = None, sharex: bool = True) -> tuple[Any, Any]:
    plt = pyplot()
    fig, axes = plt.subplots(rows, 1, figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, sharex=sharex,
                             gridspec_kw={"height_ratios": height_ratios} if height_ratios else None)
    return fig, axes


def save_png(fig: Any, path: str) -> None:
    """Render to a temporary file beside ``path`` and rename it, so a failure leaves nothing behind."""
    plt = pyplot()
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        plt.close(fig)
        raise ValueError(f"--out: directory {directory!r} does not exist; create it or choose another path")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".hdp-plot-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a picture is for sharing
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)


def png_size(path: str) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path!r} is not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
