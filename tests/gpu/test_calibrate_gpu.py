"""``hdp calibrate --quick`` on the local GPU: pinned copies, bf16 kernels, a profile the planner loads.
Skipped cleanly without CUDA."""

from __future__ import annotations

import pytest
import torch

from hdp.cli import main
from hdp.plan.cost.device import load_profile

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.timeout(300),
]


def test_quick_gpu_calibration_loads(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["calibrate", "--quick", "--model", "small", "--out", str(out), "--no-progress"]) == 0
    prof = load_profile(str(out))
    assert prof.mem_total_gib > 1 and prof.d2h_gbps > 0.5 and prof.h2d_gbps > 0.5  # pinned PCIe/NVLink-C2C, not pageable
    assert all(v > 0 for _, v in prof.gemm_tflops + prof.attn_tflops)
