"""``hdp calibrate --quick`` on CPU writes a profile that the loader accepts and ``hdp plan`` plans with."""

from __future__ import annotations

import json

import pytest

from hdp.cli import main
from hdp.plan.cost.device import DeviceProfile, load_profile

pytestmark = pytest.mark.timeout(120)


def test_quick_calibration_is_a_profile_that_hdp_plan_uses(tmp_path, capsys):
    out = tmp_path / "cpu.json"
    assert main(["calibrate", "--quick", "--device", "cpu", "--threads", "1", "--model", "tiny", "--out", str(out),
                 "--no-progress"]) == 0
    raw = json.loads(out.read_text())
    prof = load_profile(str(out))
    assert isinstance(prof, DeviceProfile) and raw["format"] == "hdp.device/1" and prof.name == "cpu-tiny-1t"
    assert [m for m, _ in prof.gemm_tflops] == [16, 64] and [s for s, _ in prof.attn_tflops] == [32, 128]
    # the curve: packed documents below pack_tokens, one causal sequence from it on
    assert set(raw["measured"]["doc_masked_attn_tflops"]) == {"32"} and set(raw["measured"]["causal_attn_tflops"]) == {"128"}
    assert all(v > 0 for _, v in prof.gemm_tflops + prof.attn_tflops)
    assert prof.peak_tflops == max(v for _, v in prof.gemm_tflops)  # CPU: the best GEMM rate measured
    assert prof.d2h_gbps > 0 and prof.layer_overhead_s > 0 and prof.mem_total_gib > 0
    capsys.readouterr()
    assert main(["plan", "--profile", str(out), "--model", "tiny", "--dist", "byted", "--tokens", "8192",
                 "--max-len", "2048", "--ranks", "4", "--capacity", "1024", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["predicted_step_time_s"] > 0 and info["rings"] >= 1


def test_calibrate_bad_output_is_one_line_exit_2(tmp_path, capsys):
    assert main(["calibrate", "--quick", "--out", str(tmp_path / "missing" / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1
    assert main(["calibrate", "--quick", "--threads", "0", "--out", str(tmp_path / "p.json")]) == 2
    assert list(tmp_path.iterdir()) == []
