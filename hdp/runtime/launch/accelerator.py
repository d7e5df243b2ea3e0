"""Two things a rank does around its accelerator that change what it measures and how much fits.

* ``allocator_defaults``: expandable segments for PyTorch's device allocator, set before CUDA
  initialises (it reads the setting once, then). HDP's micro-batches change shape every step, and
  the default allocator's fixed-size segments fragment under that: memory reserved but unusable
  grows until a step that fits on paper runs out of memory. A user's own setting always wins.
* ``step_elapsed``: a step's wall time read after the device has finished the step's work. Kernels
  run asynchronously; without the synchronize the clock stops while the GPU is still computing the
  last micro-batch and the optimizer step, and tokens/s comes out optimistic.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping

import torch

ALLOC_CONF_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")
"""Where a user may have set the allocator's settings (PyTorch reads the first one present)."""
EXPANDABLE = "expandable_segments:True"


def alloc_conf_var(version: str = torch.__version__) -> str:
    """``PYTORCH_ALLOC_CONF`` from PyTorch 2.9 on (the older name still works there but warns that it
    is deprecated), ``PYTORCH_CUDA_ALLOC_CONF`` before."""
    major, minor = (int(x) for x in version.split("+")[0].split(".")[:2])
    return "PYTORCH_ALLOC_CONF" if (major, minor) >= (2, 9) else "PYTORCH_CUDA_ALLOC_CONF"


def allocator_defaults(environ: MutableMapping[str, str] = os.environ, version: str = torch.__version__) -> str | None:
    """Set ``expandable_segments:True`` for the device allocator unless the user configured it.

    Returns the variable set, or None when nothing was changed (any user setting stands, whatever it
    says). Call it before anything initialises CUDA; afterwards the variable has no effect on this
    process (PyTorch parses it once, when the allocator first starts).
    """
    if any(name in environ for name in ALLOC_CONF_VARS):
        return None
    name = alloc_conf_var(version)
    environ[name] = EXPANDABLE
    return name


def step_elapsed(start: float, device: torch.device) -> float:
    """Seconds since ``start`` (``time.perf_counter``) once ``device`` has finished all queued work."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)
    return time.perf_counter() - start
