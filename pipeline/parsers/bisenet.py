"""facexlib's 19-class BiSeNet face parser, batched on the device and collapsed to 8 parts.

Preprocessing is facexlib's own (its `inference/inference_parsing.py`): resize
to 512x512 with bilinear interpolation, scale to 0..1, normalise with the
ImageNet mean and std. The first of BiSeNet's three outputs is used. The
argmax and the 19-to-8 lookup run on the device, so only uint8 label maps are
copied back to the host, never the 19x512x512 float logits.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.labels import PART_NAMES
from pipeline.parsers.base import FaceParser, ParsedMask, ParserSetupError, file_sha256
from pipeline.parsers.class_map import ClassMap
from pipeline.torch_files import load_torch_file

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "parsing_bisenet.pth"
WEIGHTS_URL = "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth"
INPUT_SIZE = 512
NUM_LABELS = 19
CUDA_BATCH_SIZE = 16
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def weights_cache_dir() -> Path:
    """Return the folder searched for parsing_bisenet.pth: `$SLFER_CACHE/weights`, else `~/.cache/slfer/weights`."""
    cache_root = os.environ.get("SLFER_CACHE")
    base = Path(cache_root) if cache_root else Path.home() / ".cache" / "slfer"
    return base / "weights"


def resolve_weights(weights: str | os.PathLike | None) -> Path:
    """Find the BiSeNet weights: the given file, else the cache folder, else a download into it.

    Raises:
        ParserSetupError: when the given file does not exist, or no file is
            cached and the download fails (for example offline).
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ParserSetupError(f"weights file {path} not found; pass the path of {WEIGHTS_FILE} to --weights")
        return path

    cache_dir = weights_cache_dir()
    cached = cache_dir / WEIGHTS_FILE
    if cached.is_file():
        return cached
    return _download_weights(cache_dir)


def _download_weights(cache_dir: Path) -> Path:
    """Download parsing_bisenet.pth into `cache_dir` through facexlib."""
    from facexlib.utils import load_file_from_url

    logger.info("BiSeNet weights not found in %s; downloading %s", cache_dir, WEIGHTS_URL)
    try:
        # torch.hub downloads to a temporary file and renames it when complete.
        downloaded = load_file_from_url(WEIGHTS_URL, progress=True, save_dir=str(cache_dir))
    except OSError as error:
        raise ParserSetupError(
            f"BiSeNet weights {WEIGHTS_FILE} are not in {cache_dir} and downloading them from {WEIGHTS_URL} "
            f"failed ({error}). Download the file on a machine with network access and put it at "
            f"{cache_dir / WEIGHTS_FILE} (the folder is $SLFER_CACHE/weights, default ~/.cache/slfer/weights), "
            f"or pass its path with --weights. Without the weights, --parser landmarks draws masks offline"
        ) from None
    return Path(downloaded)


def load_bisenet(path: Path, device: torch.device) -> torch.nn.Module:
    """Build facexlib's BiSeNet and load a state dict file into it, in eval mode on `device`.

    Raises:
        ParserSetupError: when the file is not a BiSeNet state dict.
    """
    from facexlib.parsing.bisenet import BiSeNet

    fix = f"use {WEIGHTS_FILE} from {WEIGHTS_URL}"
    state_dict = load_torch_file(path, "cpu", ParserSetupError, "weights file", fix,
                                 expected="facexlib BiSeNet state dict")
    model = BiSeNet(num_class=NUM_LABELS)
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        # load_state_dict reports a state dict of another model as a RuntimeError, and
        # other contents of the file (a list, a tensor) fail with a TypeError or AttributeError.
        raise ParserSetupError(
            f"weights file {path} is not a facexlib BiSeNet state dict ({str(error).splitlines()[0]}); {fix}"
        ) from None
    # channels_last lets oneDNN (CPU) and cuDNN pick their faster NHWC kernels.
    return model.eval().to(device, memory_format=torch.channels_last)


def first_output(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Compute only BiSeNet's first (fused) output, the one facexlib's inference uses.

    This is facexlib 0.3.0's `BiSeNet.forward` without the two auxiliary heads,
    which are trained as deep supervision and would cost two more 19-channel
    upsamplings to full size. A test checks it against `model(pixels)[0]`.
    """
    height, width = pixels.shape[2:]
    feat_res8, feat_cp8, _ = model.cp(pixels)
    feat_fuse = model.ffm(feat_res8, feat_cp8)
    logits, _ = model.conv_out(feat_fuse)
    return torch.nn.functional.interpolate(logits, (height, width), mode="bilinear", align_corners=True)


class FirstOutput(torch.nn.Module):
    """BiSeNet's `first_output` as a module of its own, so that torch.fx can trace it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return first_output(self.model, pixels)


def fold_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Return BiSeNet's first output as a traced module with every BatchNorm folded into its convolution.

    In eval mode a BatchNorm is a fixed per-channel scale and shift, so
    torch.fx's `fuse` can fold it into the weights of the convolution before it.
    The logits stay the same up to float rounding, and each feature map is
    read once instead of twice. On the 2-core CPU of docs/benchmarks.md the
    forward pass took 10% to 25% less time. `model` itself is left unchanged.
    """
    from torch.fx.experimental.optimization import fuse

    fused = fuse(FirstOutput(model.eval()))
    return fused.to(memory_format=torch.channels_last)


@dataclass(frozen=True)
class ResizeForBiSeNet:
    """The worker-side step: resize an RGB image to 512x512 as facexlib does (cv2 bilinear on uint8)."""

    size: int = INPUT_SIZE

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Turn a uint8 BxHxWx3 RGB batch into BiSeNet's float input: /255, ImageNet mean and std, Bx3xHxW.

    The result keeps the NHWC memory layout (channels_last) of the input.
    """
    pixels = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return pixels.sub_(mean).div_(std)


def logits_to_masks(logits: torch.Tensor, lookup: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Take the argmax over labels and map it to parts, on the logits' device.

    Args:
        logits: Bx19xHxW float logits.
        lookup: uint8 tensor of 19 part indices on the same device.

    Returns:
        (parts, labels): two BxHxW uint8 tensors on the same device.
    """
    labels = logits.argmax(dim=1)
    return lookup[labels], labels.to(torch.uint8)


class BiSeNetParser(FaceParser):
    """facexlib's BiSeNet with the 19-to-8 class map; it can mark all 8 parts."""

    parser_id = "bisenet"

    def __init__(self, weights_path: Path, class_map: ClassMap, device: torch.device, save_raw: bool = False):
        self.weights_path = weights_path
        self.weights_sha256 = file_sha256(weights_path)
        self.class_map = class_map
        self.device = device
        self.save_raw = save_raw
        # Only the traced first-output module is kept, so the weights are held once.
        self.model = fold_batch_norms(load_bisenet(weights_path, device))
        self.lookup = torch.from_numpy(class_map.lookup).to(device)
        self.visible_parts = tuple(sorted(set(class_map.to_json()["map"].values()), key=_part_order))
        logger.info("BiSeNet weights %s (sha256 %s) on %s", weights_path, self.weights_sha256, device)

    @property
    def default_batch_size(self) -> int:
        # On the CPU a batch of one 512x512 image is fastest, because larger
        # batches push the feature maps out of the caches (docs/benchmarks.md).
        # NOTE: the CUDA batch size of 16 has not been measured.
        return CUDA_BATCH_SIZE if self.device.type == "cuda" else 1

    @property
    def default_workers(self) -> int:
        # On the CPU the forward pass keeps every core busy. Decoding and
        # resizing a 48x48 FER2013 face took 0.4 ms against about 70 ms for the
        # model, so the main process does them, and worker processes would only
        # compete for the cores.
        return super().default_workers if self.device.type == "cuda" else 0

    @property
    def prepare(self) -> ResizeForBiSeNet:
        return ResizeForBiSeNet()

    def parse_batch(self, prepared: list[np.ndarray], sizes: list[tuple[int, int]]) -> list[ParsedMask]:
        if not prepared:
            return []
        batch = torch.from_numpy(np.stack(prepared))
        with torch.inference_mode():
            pixels = normalise(batch.to(self.device, non_blocking=True))
            logits = self.model(pixels)
            parts, labels = logits_to_masks(logits, self.lookup)
            parts = parts.cpu().numpy()
            labels = labels.cpu().numpy() if self.save_raw else None

        results = []
        for index, (height, width) in enumerate(sizes):
            raw = _resize_nearest(labels[index], height, width) if labels is not None else None
            results.append(ParsedMask(_resize_nearest(parts[index], height, width), raw))
        return results

    def settings(self) -> dict:
        return {"input_size": INPUT_SIZE, "class_map": self.class_map.to_json()["map"]}

    def metadata(self) -> dict:
        metadata = super().metadata()
        metadata["weights_file"] = str(self.weights_path)
        metadata["class_map"] = self.class_map.to_json()
        return metadata


def _resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return np.ascontiguousarray(mask)
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def _part_order(part: str) -> int:
    return PART_NAMES.index(part)


def create_bisenet_parser(*, weights: Path | None, class_map: ClassMap, device: torch.device,
                          save_raw: bool = False, **_unused) -> BiSeNetParser:
    """Resolve the weights and build the BiSeNet parser (the registry's factory)."""
    return BiSeNetParser(resolve_weights(weights), class_map, device, save_raw=save_raw)
