"""Failures of other ranks, as one exception type, so no caller has to read error text.

gloo reports a dead peer as a plain ``RuntimeError`` ("Connection reset by peer", ...), which could
just as well be a bug of ours. So each collective we call runs inside ``collective(...)``, which
turns a failure *of that call* into ``PeerError``; ring transfers raise ``RingCommError`` (a
``PeerError``) from their own deadline. Everything else keeps its type and its traceback.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch.distributed as dist


class PeerError(RuntimeError):
    """A collective or ring transfer failed: a peer died, hung past the timeout, or left."""


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Run one collective; its RuntimeError becomes ``PeerError`` naming ``what``."""
    try:
        yield
    except (PeerError, dist.DistError):
        raise
    except RuntimeError as e:
        raise PeerError(f"{what} failed: {peer_cause(e)}") from e


def peer_cause(e: BaseException) -> str:
    """The backend's error as one clause (gloo's raw text names source files and ports, not causes)."""
    text = str(e).strip()
    low = text.lower()
    if any(s in low for s in ("closed by peer", "reset by peer", "broken pipe", "connection refused", "eof")):
        return "a peer closed its connection (it died or was stopped)"
    if "timed out" in low or "timeout" in low:
        return "a peer did not answer in time (it hangs, died, or runs another plan)"
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:200]
