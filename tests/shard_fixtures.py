"""Small labelled datasets with parse-masks style outputs, for the shard tests.

Images are real PNG files in the folder-per-class layout. Masks are 8-part
PNGs at the paths parse-masks uses, drawn here so that the shard tests do not
depend on a face parser.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from pipeline.mask_io import mask_path, write_mask

CLASSES = ("angry", "happy", "surprise")


def draw_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An asymmetric mask of part blocks: skin, then eye, nose and mouth rectangles, then hair."""
    mask = np.ones((height, width), dtype=np.uint8)
    mask[: height // 4] = 7
    for part in (2, 4, 5):
        top = int(rng.integers(height // 4, height - 4))
        left = int(rng.integers(0, width - 4))
        mask[top:top + int(rng.integers(2, 8)), left:left + int(rng.integers(2, 10))] = part
    mask[:, : width // 8] = 0
    return mask


def draw_image(mask: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """An RGB image whose pixels follow the mask (30 grey levels per part) plus noise."""
    base = mask.astype(np.float64) * 30
    channels = [base + rng.normal(0, noise, mask.shape) if noise else base for _ in range(3)]
    return np.clip(np.stack(channels, axis=2), 0, 255).astype(np.uint8)


def make_dataset(tmp_path: Path, per_class: dict[str, int], shape: tuple[int, int] = (40, 32),
                 noise: float = 8.0, seed: int = 0) -> tuple[Path, Path]:
    """Write ROOT/<split>/<class>/<n>.png images and OUT/masks, OUT/parser.json beside them.

    Args:
        per_class: images per class in each split, such as {"train": 4, "val": 2}.
        shape: height and width of every image and mask.
        noise: standard deviation of the grey noise added to each image; 0
            makes image pixels exactly 30 times the mask value.

    Returns:
        The dataset root and the parse-masks output folder.
    """
    rng = np.random.default_rng(seed)
    root, masks_dir = tmp_path / "faces", tmp_path / "parsed"
    for split, count in per_class.items():
        for class_name in CLASSES:
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for number in range(count):
                mask = draw_mask(*shape, rng)
                image = draw_image(mask, rng, noise)
                cv2.imwrite(str(folder / f"{number}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                write_mask(mask_path(masks_dir, f"{split}/{class_name}/{number}.png"), mask)
    (masks_dir / "parser.json").write_text(json.dumps({"parser": "drawn-by-test", "weights_sha256": None}))
    return root, masks_dir


def build_args(root: Path, masks_dir: Path, out_dir: Path, *options: str) -> list[str]:
    """Arguments of `slfer build-shards` for a dataset made by `make_dataset`."""
    return ["build-shards", str(root), "--format", "folder", "--masks", str(masks_dir),
            "--out", str(out_dir), *options]
