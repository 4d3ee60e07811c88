import pytest
import torch

from lego_studio.core import devices
from lego_studio.core.devices import pick_device, pick_dtype
from lego_studio.core.errors import ModelError


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


def test_auto_falls_back_to_cpu(no_accelerators):
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device() == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "mps"


def test_explicit_cpu_always_works():
    assert pick_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps"])
def test_unavailable_explicit_device_is_one_line_model_error(no_accelerators, name):
    with pytest.raises(ModelError) as info:
        pick_device(name)
    message = str(info.value)
    assert name in message and "not available" in message and "\n" not in message


def test_unknown_device_name():
    with pytest.raises(ModelError, match="unknown device 'tpu'"):
        pick_device("tpu")


def test_dtype_rules():
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert pick_dtype(cpu) == torch.float32
    assert pick_dtype(cpu, "fp16") == torch.float32  # half precision is never used on the CPU
    assert pick_dtype(cpu, "bf16") == torch.float32
    assert pick_dtype(cuda) == torch.float16
    assert pick_dtype(mps, "auto") == torch.float16
    assert pick_dtype(cuda, "bf16") == torch.bfloat16
    assert pick_dtype(cuda, "fp32") == torch.float32
    assert pick_dtype("cuda", "fp16") == torch.float16


def test_unknown_precision():
    with pytest.raises(ModelError, match="unknown precision 'fp8'"):
        pick_dtype(torch.device("cpu"), "fp8")


def test_the_app_leaves_one_core_free_for_the_ui():
    from lego_studio.core.devices import app_cpu_threads

    assert [app_cpu_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
