"""The torch device that a --device option names, shared by parse-masks, train and evaluate."""

from __future__ import annotations

import torch

from pipeline.text import count_noun


class DeviceError(ValueError):
    """A --device value that is invalid or not available on this machine."""


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """Turn auto, cpu, cuda or cuda:N into a device present here; under torchrun, cuda means cuda:LOCAL_RANK.

    Raises:
        DeviceError: for an invalid or unsupported name, or a CUDA device that is not present.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise DeviceError(f"device {spec!r} is invalid ({error}); use auto, cpu, cuda or cuda:N") from error

    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"device {spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r} requested but CUDA is not available; use --device cpu")

    if device.index is None:
        device = torch.device("cuda", local_rank)
    count = torch.cuda.device_count()
    if device.index >= count:
        raise DeviceError(
            f"device {device} requested but this machine has {count_noun(count, 'CUDA device')}; "
            f"pass cuda:N with N below {count}, or --device auto"
        )
    return device
