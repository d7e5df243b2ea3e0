"""What a rank sets up around its accelerator (issue 19, item 12): expandable segments before CUDA
starts unless the user chose, and step time read only after the device has finished the step."""

from __future__ import annotations

import json

import pytest
import torch

from hdp.runtime.config import TrainConfig
from hdp.runtime.launch import accelerator, worker
from hdp.runtime.launch.accelerator import allocator_defaults, step_elapsed
from hdp.runtime.launch.spawn import free_port

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("version,name", [("2.13.0+cpu", "PYTORCH_ALLOC_CONF"), ("2.9.0", "PYTORCH_ALLOC_CONF"),
                                          ("2.5.1+cu121", "PYTORCH_CUDA_ALLOC_CONF")])
def test_expandable_segments_set_when_the_user_did_not(version, name):
    env: dict[str, str] = {"PATH": "/bin"}
    assert allocator_defaults(env, version) == name
    assert env == {"PATH": "/bin", name: "expandable_segments:True"}


@pytest.mark.parametrize("var", ["PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF"])
@pytest.mark.parametrize("value", ["max_split_size_mb:128", "expandable_segments:False", ""])
def test_a_user_setting_is_left_alone(var, value):
    env = {var: value}
    assert allocator_defaults(env) is None
    assert env == {var: value}


def test_step_time_stops_after_the_device_synchronises(monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(torch.accelerator, "synchronize", lambda device=None: events.append(f"sync {device}"))

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            events.append("clock")
            return 12.5

    monkeypatch.setattr(accelerator, "time", Clock)
    assert step_elapsed(10.0, torch.device("cuda", 3)) == 2.5
    assert events == ["sync cuda:3", "clock"]
    events.clear()
    assert step_elapsed(10.0, torch.device("cpu")) == 2.5
    assert events == ["clock"]  # nothing queued on a CPU: no synchronize to wait for


def test_the_worker_sets_the_allocator_first_and_times_steps_after_the_sync(tmp_path, monkeypatch):
    order: list[str] = []
    real_pick = worker.pick_device
    monkeypatch.setattr(worker, "allocator_defaults", lambda: order.append("allocator_defaults"))
    monkeypatch.setattr(worker, "pick_device", lambda *a, **k: (order.append("pick_device"), real_pick(*a, **k))[1])
    monkeypatch.setattr(worker, "step_elapsed", lambda start, device: (order.append(f"step_elapsed {device}"), 7.0)[1])
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    metrics = tmp_path / "m.jsonl"
    cfg = TrainConfig(model="tiny", steps=2, global_batch_tokens=256, max_seq_len=64, capacity=256, progress=False,
                      metrics=str(metrics), timeout_s=30)
    assert worker.run_rank(cfg, 0, 1, 0, use_accelerator=False) == 0
    assert order == ["allocator_defaults", "pick_device", "step_elapsed cpu", "step_elapsed cpu"]
    recs = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step_time_s"] for r in recs] == [7.0, 7.0]
