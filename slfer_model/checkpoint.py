"""Pretrained backbone loading, and atomic saving and loading of training checkpoints."""

from __future__ import annotations

import logging
import pickle
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet18_Weights

from slfer_model.run_files import atomic_file

logger = logging.getLogger(__name__)

IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
# Prefixes that data-parallel training and wrapper modules put before torchvision's key names.
STRIPPED_PREFIXES = ("module.",)


class PretrainedWeightsError(RuntimeError):
    """A pretrained backbone that cannot be downloaded, read or matched to the model."""


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be read."""


def load_pretrained_backbone(model: nn.Module, spec: str) -> None:
    """Initialise `model.backbone` from pretrained ResNet-18 weights.

    Args:
        model: an SLFERNet (anything with a `backbone` module in torchvision layout).
        spec: "none" (keep the random initialisation), "imagenet" (torchvision's
            ImageNet weights, downloaded or taken from the torch hub cache) or the path
            of a torchvision-layout state dict, optionally wrapped in {"state_dict": ...}
            and with "module." key prefixes, such as the MS-Celeb-1M ResNet-18 files
            distributed with SCN, RAN and DAN.

    Raises:
        PretrainedWeightsError: when the weights cannot be downloaded or read, or when
            no key of the file matches the backbone.
    """
    if spec == "none":
        return

    if spec == "imagenet":
        state_dict = download_imagenet_weights()
        source = IMAGENET_WEIGHTS.url
    else:
        state_dict = read_state_dict_file(Path(spec))
        source = spec

    copy_matching_weights(model.backbone, state_dict, source)


def download_imagenet_weights() -> dict[str, torch.Tensor]:
    """Return torchvision's ImageNet ResNet-18 state dict, downloading it unless cached."""
    try:
        return IMAGENET_WEIGHTS.get_state_dict(progress=True, map_location="cpu")
    except (urllib.error.URLError, OSError) as error:
        raise PretrainedWeightsError(
            f"cannot download the ImageNet ResNet-18 weights from {IMAGENET_WEIGHTS.url} ({error}); "
            f"download that file where there is network access and pass its path as --pretrained PATH"
        ) from error


def read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict file, unwrapping {"state_dict": ...} and removing "module." prefixes."""
    if not path.is_file():
        raise PretrainedWeightsError(
            f"pretrained weights {str(path)!r} are not a file; pass none, imagenet or the path of a ResNet-18 state dict"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError) as error:
        raise PretrainedWeightsError(
            f"cannot read pretrained weights {path}: {error}; the file must be a torch.save'd state dict "
            f"(tensors only, optionally inside a 'state_dict' key)"
        ) from error

    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise PretrainedWeightsError(f"pretrained weights {path} hold a {type(data).__name__}, not a state dict")

    return {strip_prefixes(key): value for key, value in data.items() if isinstance(value, torch.Tensor)}


def strip_prefixes(key: str) -> str:
    """Remove leading "module." prefixes, however many wrappers added them."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def copy_matching_weights(backbone: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Copy the tensors whose name and shape match the backbone, and log what did not match.

    Backbone keys absent from the file, such as the SE blocks for a plain ResNet-18, keep
    their initialisation. Keys of the file absent from the backbone, such as fc.* of any
    class count, are ignored.
    """
    own = backbone.state_dict()
    matched = {key: value for key, value in state_dict.items() if key in own and own[key].shape == value.shape}
    mismatched = sorted(key for key in state_dict if key in own and key not in matched)
    missing = sorted(set(own) - set(matched))
    unexpected = sorted(set(state_dict) - set(own))

    if not matched:
        raise PretrainedWeightsError(
            f"no tensor of {source} matches the ResNet-18 backbone (first keys of the file: "
            f"{', '.join(list(state_dict)[:5]) or 'none'}); pass a torchvision-layout ResNet-18 state dict"
        )

    backbone.load_state_dict(matched, strict=False)
    logger.info("loaded %d of %d backbone tensors from %s", len(matched), len(own), source)
    if missing:
        logger.info("backbone tensors not in %s, left at their initialisation: %s", source, ", ".join(missing))
    if unexpected:
        logger.info("tensors of %s not used by the backbone: %s", source, ", ".join(unexpected))
    if mismatched:
        logger.warning("tensors of %s skipped for a shape mismatch: %s", source, ", ".join(mismatched))


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write `checkpoint` with torch.save to a temporary file beside `path`, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as file:
        torch.save(checkpoint, file)


def load_checkpoint(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint, moving its tensors to `map_location`.

    The explicit map_location lets a checkpoint saved on a GPU load on a CPU-only machine.

    Raises:
        CheckpointError: when the file is missing or is not a readable checkpoint.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"checkpoint {path} not found") from error
    except (pickle.UnpicklingError, RuntimeError, OSError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not an slfer checkpoint: it has no 'model' entry")
    return checkpoint
