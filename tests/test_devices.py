"""The --device names that parse-masks, train and evaluate accept."""

from __future__ import annotations

import pytest
import torch

from pipeline.devices import DeviceError, resolve_device


@pytest.mark.parametrize("spec", ["cpu", "auto"])
def test_cpu_names_resolve(spec):
    if spec == "auto" and torch.cuda.is_available():
        pytest.skip("auto picks CUDA on this machine")
    assert resolve_device(spec) == torch.device("cpu")


@pytest.mark.parametrize("spec, message", [
    ("gpu", "is invalid"),
    ("meta", "is not supported"),
])
def test_bad_names_rejected(spec, message):
    with pytest.raises(DeviceError, match=message):
        resolve_device(spec)


def test_cuda_index_beyond_count_rejected():
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda:0")
        return
    count = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=f"pass cuda:N with N below {count}"):
        resolve_device(f"cuda:{count}")
