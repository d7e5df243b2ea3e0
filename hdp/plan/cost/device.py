"""Device profiles: what one accelerator achieves, as measured, for the cost model.

A profile is read either in our own format (``DeviceProfile.to_dict``) or in the raw calibration
format the project measured an H100 in (shipped in ``profiles/``; see its README).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_PROFILE = "h100-sxm-80gb"


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    name: str
    peak_tflops: float
    """Dense bf16 peak of the device, for MFU."""
    gemm_tflops: tuple[tuple[int, float], ...]
    """(tokens M, achieved TFLOP/s) for a layer's GEMMs, sorted by M."""
    attn_tflops: tuple[tuple[int, float], ...]
    """(document length, achieved causal attention fwd+bwd TFLOP/s), sorted by length."""
    d2h_gbps: float
    h2d_gbps: float
    mem_total_gib: float
    layer_overhead_s: float = 20e-6
    """Fixed cost of one layer's kernels for one micro-batch (launches, norms); an estimate."""
    host_mem_gib: float = 192.0
    """Host memory one device may fill with offloaded activations (a DGX H100 node has 2 TB for 8
    GPUs; this leaves room for the data loader, pinned staging and the OS)."""
    pcie_gbps: float = 64.0
    """The GPU's PCIe link per direction, GB/s, shared by its offload copies and its NIC's traffic
    (GPUDirect RDMA crosses the same link). PCIe Gen5 x16: 32 GT/s x 16 lanes, 128b/130b = 63 GB/s;
    the calibration's single copy reaches 55 GB/s of it. Only the simulator reads it (``hdp.sim.contention``)."""
    host_mem_gbps: float = 300.0
    """Host memory bandwidth one node's GPU copies share, GB/s (both directions together). A DGX H100
    has 2 sockets x 8 channels of DDR5-4800, 614 GB/s peak; about half of that for DMA is an assumption
    (the CPU side, loaders and pinned staging use the rest), not a measurement: set it from 8 concurrent
    copies. Only the simulator reads it (``hdp.sim.contention``)."""
    source: str = ""

    def __post_init__(self) -> None:
        if not self.gemm_tflops or not self.attn_tflops:
            raise ValueError(f"device profile {self.name!r} needs GEMM and attention measurements")
        if min(self.d2h_gbps, self.h2d_gbps, self.mem_total_gib, self.peak_tflops, self.pcie_gbps,
               self.host_mem_gbps) <= 0:
            raise ValueError(f"device profile {self.name!r} has a non-positive bandwidth, memory or peak")

    def gemm_efficiency(self, tokens: float) -> float:
        """Achieved GEMM TFLOP/s for a micro-batch of ``tokens`` rows."""
        return _log_interp(self.gemm_tflops, tokens)

    def attn_efficiency(self, doc_len: float) -> float:
        """Achieved attention TFLOP/s for documents of ``doc_len`` tokens (short ones pay a penalty)."""
        return _log_interp(self.attn_tflops, doc_len)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "hdp.device/1",
            "name": self.name,
            "source": self.source,
            "peak_tflops": self.peak_tflops,
            "gemm_tflops": {str(m): t for m, t in self.gemm_tflops},
            "attn_tflops": {str(s): t for s, t in self.attn_tflops},
            "d2h_GBps": self.d2h_gbps,
            "h2d_GBps": self.h2d_gbps,
            "mem_total_GiB": self.mem_total_gib,
            "layer_overhead_s": self.layer_overhead_s,
            "host_mem_GiB": self.host_mem_gib,
            "pcie_GBps": self.pcie_gbps,
            "host_mem_GBps": self.host_mem_gbps,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "custom") -> "DeviceProfile":
        if "causal_attn" in d:
            return _from_calibration(d, name)
        try:
            return cls(
                name=d.get("name", name),
                source=d.get("source", ""),
                peak_tflops=float(d["peak_tflops"]),
                gemm_tflops=_points(d["gemm_tflops"]),
                attn_tflops=_points(d["attn_tflops"]),
                d2h_gbps=float(d["d2h_GBps"]),
                h2d_gbps=float(d["h2d_GBps"]),
                mem_total_gib=float(d["mem_total_GiB"]),
                layer_overhead_s=float(d.get("layer_overhead_s", 20e-6)),
                host_mem_gib=float(d.get("host_mem_GiB", 192.0)),
                pcie_gbps=float(d.get("pcie_GBps", 64.0)),
                host_mem_gbps=float(d.get("host_mem_GBps", 300.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"device profile {name!r} is malformed ({e}); see hdp.plan.cost.device") from None


def _points(d: dict[str, float]) -> tuple[tuple[int, float], ...]:
    return tuple(sorted((int(k), float(v)) for k, v in d.items()))


def _log_interp(points: tuple[tuple[int, float], ...], x: float) -> float:
    """Piecewise-linear in log2(x); clamped to the end points outside the measured range."""
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    lx = math.log2(x)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            t = (lx - math.log2(x0)) / (math.log2(x1) - math.log2(x0))
            return y0 + t * (y1 - y0)
    raise AssertionError("unreachable")


def _from_calibration(d: dict[str, Any], name: str) -> DeviceProfile:
    """Convert the raw calibration measurements into a profile.

    Short documents are run packed, so below 16K the document-masked (packed) SDPA figures are the
    right efficiency; from 16K on, the single-sequence causal figures. GEMM figures are averaged per
    row count M over the layer shapes measured.
    """
    by_m: dict[int, list[float]] = {}
    for shape, tflops in d["gemm_tflops"].items():
        by_m.setdefault(int(shape.split("x")[0]), []).append(float(tflops))
    gemm = {m: sum(v) / len(v) for m, v in by_m.items()}
    attn: dict[int, float] = {}
    for doc, row in d.get("doc_masked_attn_64k", {}).items():
        if int(doc) < 16384:
            attn[int(doc)] = float(row["sdpa_tflops"])
    for s, row in d["causal_attn"].items():
        if int(s) >= 16384 or not attn:
            attn[int(s)] = float(row["fwdbwd_tflops"])
    device = str(d.get("device", name))
    return DeviceProfile(
        name=name,
        source=f"calibration of {device} (torch {d.get('torch', '?')})",
        peak_tflops=float(d.get("peak_tflops", 989.0 if "H100" in device else max(gemm.values()))),
        gemm_tflops=tuple(sorted(gemm.items())),
        attn_tflops=tuple(sorted(attn.items())),
        d2h_gbps=float(d["d2h_GBps"]),
        h2d_gbps=float(d["h2d_GBps"]),
        mem_total_gib=float(d["mem_total_GiB"]),
        host_mem_gib=float(d.get("host_mem_GiB", 192.0)),
        pcie_gbps=float(d.get("pcie_GBps", 64.0)),
        host_mem_gbps=float(d.get("host_mem_GBps", 300.0)),
    )


def load_profile(path_or_name: str | Path | None = None) -> DeviceProfile:
    """Load a profile by file path, or by the name of one shipped in ``hdp/plan/profiles``."""
    if path_or_name is None:
        path_or_name = DEFAULT_PROFILE
    p = Path(path_or_name)
    try:
        if p.suffix == ".json" or p.exists():
            text = p.read_text()
            name = p.stem
        else:
            text = resources.files("hdp.plan").joinpath("profiles", f"{path_or_name}.json").read_text()
            name = str(path_or_name)
    except OSError as e:
        raise ValueError(f"cannot read device profile {str(path_or_name)!r}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"device profile {str(path_or_name)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"device profile {str(path_or_name)!r} is {type(data).__name__} JSON, not an object: "
                         "give an object as hdp.plan.cost.device.DeviceProfile.to_dict writes")
    return DeviceProfile.from_dict(data, name=name)
