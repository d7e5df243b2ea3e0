"""Which sizes a calibration runs, and how its measurements become a device profile (hdp.device/1).

The attention curve is what the cost model's ``attn_efficiency`` interpolates: below
``pack_tokens`` documents are measured packed (``pack_tokens / s`` of them, document-masked, as
the runtime runs short sequences), from ``pack_tokens`` on as one causal sequence — the same split
the shipped H100 profile uses (``hdp.plan.cost.device._from_calibration``).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from hdp.calibrate import measure
from hdp.plan.cost.device import DeviceProfile
from hdp.plan.cost.model_config import ModelConfig


@dataclass(frozen=True, slots=True)
class Sizes:
    gemm_rows: tuple[int, ...]
    attn_lengths: tuple[int, ...]
    pack_tokens: int
    copy_bytes: int
    min_time_s: float
    """Each figure is a mean over at least this long (and at least two runs) after a warm-up."""


QUICK = Sizes((16, 64), (32, 128), 128, 1 << 20, 0.01)
CPU = Sizes((64, 256, 1024, 4096), (128, 512, 2048, 4096), 4096, 64 << 20, 0.2)
GPU = Sizes((1024, 4096, 16384, 65536), (512, 2048, 8192, 16384, 32768, 65536), 65536, 1 << 30, 0.2)

PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("H20", 148.0), ("A100", 312.0),
                    ("L40S", 362.0), ("B200", 2250.0))
"""Dense bf16 peaks from the vendors' data sheets, matched by substring of the device name, first match."""


def device_name(device: torch.device) -> str:
    if device.type == "cpu":
        return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    return torch.get_device_module(device).get_device_name(device)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def peak_tflops(name: str, gemm: dict[int, float]) -> float:
    """The data-sheet peak when the device is known, else the best GEMM rate measured (CPU)."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return max(gemm.values())


def steps(sizes: Sizes, p2p: bool) -> int:
    """How many measurements ``calibrate`` reports to ``on_step`` (for a progress bar)."""
    return len(sizes.gemm_rows) + 1 + len(sizes.attn_lengths) + 1 + int(p2p)


def calibrate(model: ModelConfig, device: torch.device, dtype: torch.dtype, sizes: Sizes, *, name: str, source: str,
              on_step: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure ``device`` at ``model``'s shapes; returns the profile as ``DeviceProfile.to_dict`` writes it."""
    shapes = measure.layer_shapes(model.hidden_size, model.kv_dim, model.ffn_size)
    t = sizes.min_time_s
    gemm: dict[int, float] = {}
    for m in sizes.gemm_rows:
        on_step(f"GEMM {m} rows")
        gemm[m] = measure.gemm_tflops(m, shapes, device, dtype, t)
    on_step("per-layer overhead")
    overhead = measure.layer_overhead_s(shapes, device, dtype, t)
    causal: dict[int, float] = {}
    packed: dict[int, float] = {}
    for s in sizes.attn_lengths:
        if s < sizes.pack_tokens:
            on_step(f"document-masked attention, {sizes.pack_tokens // s} x {s}")
            packed[s] = measure.doc_attn_tflops(sizes.pack_tokens // s * s, s, model.num_heads, model.num_kv_heads,
                                                model.head_dim, device, dtype, t)
        else:
            on_step(f"causal attention, {s}")
            causal[s] = measure.causal_attn_tflops(s, model.num_heads, model.head_dim, device, dtype, t)
    on_step("host <-> device copies")
    d2h, h2d = measure.copy_gbps(device, sizes.copy_bytes, t)
    measured: dict[str, Any] = {"pack_tokens": sizes.pack_tokens, "dtype": str(dtype).removeprefix("torch."),
                                "model_shapes": model.name,
                                "doc_masked_attn_tflops": {str(s): v for s, v in packed.items()},
                                "causal_attn_tflops": {str(s): v for s, v in causal.items()}}
    count = torch.accelerator.device_count() if device.type != "cpu" else 0
    if count >= 2:
        on_step("P2P between devices 0 and 1")
        measured["p2p_GBps"] = measure.p2p_gbps(torch.device(device.type, 0), torch.device(device.type, 1),
                                                sizes.copy_bytes, t)
    host_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if device.type == "cpu":
        mem_gib = host_gib
    else:
        mem_gib = torch.get_device_module(device).get_device_properties(device).total_memory / 2**30
    profile = DeviceProfile(
        name=name, source=source, peak_tflops=peak_tflops(device_name(device), gemm),
        gemm_tflops=tuple(sorted(gemm.items())), attn_tflops=tuple(sorted({**packed, **causal}.items())),
        d2h_gbps=d2h, h2d_gbps=h2d, mem_total_gib=mem_gib, layer_overhead_s=overhead,
        # what one device may fill with offloaded activations: its share of the host, with room to spare
        host_mem_gib=0.75 * host_gib / max(count, 1),
    )
    out = profile.to_dict()
    out["measured"] = measured
    return out
