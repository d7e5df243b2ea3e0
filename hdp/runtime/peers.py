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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeerError(f"{what} failed: {first[:300]}") from e
