"""Which dtype and matmul precision a run gets by device (issue 19, item 8), checked without a GPU.

bfloat16 by default where the machine has an accelerator (fp32 masters and moments stay), float32
on CPU (the exact tests are unchanged); TF32 matmuls where float32 remains on CUDA, never on CPU
or for float64.
"""

from __future__ import annotations

import pytest
import torch

from hdp.runtime import config as config_module
from hdp.runtime.config import TrainConfig, default_dtype, dtype_for_device
from hdp.runtime.model import source
from hdp.runtime.optim.precision import Precision

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cuda_machine(monkeypatch):
    """torch.accelerator as it answers on a CUDA machine."""
    monkeypatch.setattr(config_module.torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(config_module.torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cuda"))


@pytest.fixture
def restore_matmul_precision():
    before = torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision = before


def test_device_type_decides_the_default_dtype():
    assert dtype_for_device("cpu") == "float32"
    assert dtype_for_device("cuda") == dtype_for_device("xpu") == "bfloat16"


def test_the_default_is_float32_on_this_cpu_machine_and_explicit_dtypes_win():
    assert not torch.accelerator.is_available()
    assert default_dtype() == TrainConfig().dtype == "float32"
    assert TrainConfig(dtype="float64").dtype == "float64"


def test_a_cuda_machine_defaults_to_bf16_with_fp32_masters(cuda_machine):
    assert default_dtype() == TrainConfig().dtype == "bfloat16"
    assert TrainConfig(dtype="float32").dtype == "float32"
    p = Precision.for_dtype(TrainConfig().torch_dtype)
    assert (p.compute, p.master) == (torch.bfloat16, torch.float32)


@pytest.mark.parametrize("device_type,dtype,expected", [
    ("cuda", torch.float32, "tf32"), ("cuda", torch.bfloat16, None), ("cuda", torch.float64, None),
    ("cpu", torch.float32, None), ("cpu", torch.float64, None)])
def test_tf32_only_where_float32_remains_on_cuda(device_type, dtype, expected, restore_matmul_precision):
    assert source.matmul_precision(device_type, dtype) == expected
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert source.configure_matmul(torch.device(device_type), dtype) == expected
    assert torch.backends.cuda.matmul.fp32_precision == (expected or "ieee")


def test_every_rank_sets_its_matmul_precision_where_it_builds_the_model(monkeypatch):
    seen = []
    monkeypatch.setattr(source, "configure_matmul", lambda device, dtype: seen.append((device, dtype)))
    source.build_train_model(TrainConfig(dtype="float64"), torch.device("cpu"))
    assert seen == [(torch.device("cpu"), torch.float64)]
