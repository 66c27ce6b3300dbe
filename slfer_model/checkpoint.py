"""Pretrained backbone loading, and atomic saving and loading of training checkpoints."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet18_Weights

from pipeline.torch_files import load_torch_file
from slfer_model.run_files import atomic_file

logger = logging.getLogger(__name__)

IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
# Prefixes that data-parallel training and wrapper modules put before torchvision's key names.
STRIPPED_PREFIXES = ("module.",)
# Prefix of the backbone's keys in the "model" state dict of an slfer checkpoint.
SLFER_BACKBONE_PREFIX = "backbone."
# Maximum number of a file's keys that an error message lists.
LISTED_KEYS = 10


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
            distributed with SCN, RAN and DAN. The path may also be a checkpoint of
            `slfer train` (RUN/best.pt or last.pt), whose backbone weights are loaded.

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
    """Read the backbone tensors of a state dict file or an slfer checkpoint.

    A state dict may be wrapped in {"state_dict": ...} and have "module." prefixes. Of an
    slfer checkpoint, only the "backbone." tensors of its "model" entry are returned,
    without that prefix.
    """
    if not path.is_file():
        raise PretrainedWeightsError(
            f"pretrained weights {str(path)!r} are not a file; pass none, imagenet, the path of a ResNet-18 "
            f"state dict or an slfer checkpoint (RUN/best.pt)"
        )
    data = load_torch_file(path, "cpu", PretrainedWeightsError, "pretrained weights",
                           "pass a torch.save'd ResNet-18 state dict or an slfer checkpoint (RUN/best.pt)")
    if not isinstance(data, dict):
        raise PretrainedWeightsError(f"pretrained weights {path} hold a {type(data).__name__}, not a state dict")

    if is_slfer_checkpoint(data):
        return slfer_backbone_state_dict(data, path)
    if isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    tensors = {strip_prefixes(key): value for key, value in data.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise PretrainedWeightsError(
            f"pretrained weights {path} contain no tensors at the top level or under 'state_dict' (its top-level "
            f"keys: {list_keys(data)}); pass a torchvision-layout ResNet-18 state dict or an slfer checkpoint"
        )
    return tensors


def is_slfer_checkpoint(data: dict) -> bool:
    """Check whether `data` is a checkpoint of `slfer train`: a "model" state dict with "backbone." keys."""
    model = data.get("model")
    return isinstance(model, dict) and any(str(key).startswith(SLFER_BACKBONE_PREFIX) for key in model)


def slfer_backbone_state_dict(checkpoint: dict, path: Path) -> dict[str, torch.Tensor]:
    """Return the backbone tensors of an slfer checkpoint, named as torchvision names them."""
    logger.info("%s is an slfer checkpoint of variant %s; loading its backbone only", path,
                checkpoint.get("variant", "unknown"))
    return {
        key[len(SLFER_BACKBONE_PREFIX):]: value
        for key, value in checkpoint["model"].items()
        if key.startswith(SLFER_BACKBONE_PREFIX) and isinstance(value, torch.Tensor)
    }


def list_keys(data: dict) -> str:
    """Write the first LISTED_KEYS keys of `data`, comma-separated, and how many more there are."""
    keys = [str(key) for key in data]
    if not keys:
        return "none"
    more = f" and {len(keys) - LISTED_KEYS} more" if len(keys) > LISTED_KEYS else ""
    return ", ".join(keys[:LISTED_KEYS]) + more


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
    class count or the SE blocks of a checkpoint for a backbone without them, are ignored.
    """
    own = backbone.state_dict()
    matched = {key: value for key, value in state_dict.items() if key in own and own[key].shape == value.shape}
    mismatched = sorted(key for key in state_dict if key in own and key not in matched)
    missing = sorted(set(own) - set(matched))
    unexpected = sorted(set(state_dict) - set(own))

    if not matched:
        raise PretrainedWeightsError(
            f"no tensor of {source} matches the ResNet-18 backbone (keys of the file: {list_keys(state_dict)}); "
            f"pass a torchvision-layout ResNet-18 state dict or an slfer checkpoint (RUN/best.pt)"
        )

    backbone.load_state_dict(matched, strict=False)
    logger.info("loaded %d of %d backbone tensors from %s", len(matched), len(own), source)
    if missing:
        logger.info("backbone tensors not in %s, left at their initialisation: %s", source, ", ".join(missing))

    se_keys = [key for key in unexpected if ".se." in key]
    if se_keys and not getattr(backbone, "se", True):
        logger.info("skipped the %d SE tensors of %s, because this backbone has no SE blocks",
                    len(se_keys), source)
        unexpected = [key for key in unexpected if key not in se_keys]
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
    checkpoint = load_torch_file(path, map_location, CheckpointError, "checkpoint",
                                 "pass a last.pt or best.pt written by slfer train")
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not an slfer checkpoint: it has no 'model' entry")
    return checkpoint
