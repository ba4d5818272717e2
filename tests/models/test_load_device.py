"""``esr_models.load`` checks the device it is asked for before loading or moving anything
(issue 27: on a CPU-only torch, device='cuda' was torch's bare AssertionError "Torch not compiled
with CUDA enabled")."""
from __future__ import annotations

import pytest
import torch

import esr_models
from esr_kernels.errors import DeviceUnavailableError, EsrError, InvalidValueError

pytestmark = pytest.mark.shared  # the upstream weights (loaded only where the device is fine)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_cuda_without_cuda_is_the_packages_error(device, fused):
    with pytest.raises(DeviceUnavailableError) as info:
        esr_models.load("pfdnlite", device=device, fused=fused)
    assert isinstance(info.value, EsrError) and isinstance(info.value, RuntimeError)
    why = "CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
    assert str(info.value).startswith(f"device '{torch.device(device)}': ") and why in str(info.value)


def test_a_name_that_is_no_device_is_an_invalid_value():
    with pytest.raises(InvalidValueError, match="'gpu0' is not a device name"):
        esr_models.load("pfdnlite", device="gpu0")


def test_cpu_still_loads():
    assert next(esr_models.load("pfdnlite", device=torch.device("cpu")).parameters()).device.type == "cpu"
