"""Mask file paths of parse-masks, atomic PNG writes and checked reads of masks.

A mask is an HxW uint8 array of part indices (or of the parser's own labels
for the raw masks of --save-raw), stored as a lossless 8-bit grey PNG.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from pipeline.parts import part_pixel_counts

MASKS_FOLDER = "masks"
RAW_FOLDER = "raw"

__all__ = ["MaskReadError", "mask_path", "raw_mask_path", "write_mask", "read_mask", "part_pixel_counts"]


class MaskReadError(ValueError):
    """A mask file that is missing or not an 8-bit single-channel PNG."""


def mask_path(out_dir: str | os.PathLike, record_path: str) -> Path:
    """Return the 8-part mask file of a record: `out_dir/masks/<record path>.png`.

    Args:
        out_dir: the --out folder of parse-masks.
        record_path: the record's POSIX path relative to the dataset's image root.
    """
    return Path(out_dir) / MASKS_FOLDER / (record_path + ".png")


def raw_mask_path(out_dir: str | os.PathLike, record_path: str) -> Path:
    """Return the parser's own label mask file of a record (--save-raw): `out_dir/raw/<record path>.png`."""
    return Path(out_dir) / RAW_FOLDER / (record_path + ".png")


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a mask as a PNG under a temporary name in the same folder, then rename it.

    A crash leaves either no file or the complete file at `path`, never a
    partial one. A leftover temporary file starts with "." and ends in ".tmp".

    Raises:
        ValueError: when `mask` is not a 2-D uint8 array.
        OSError: when the folder or file cannot be written.
    """
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"a mask must be a 2-D uint8 array, got shape {mask.shape} and dtype {mask.dtype}")
    encoded, png = cv2.imencode(".png", mask)
    if not encoded:
        raise OSError(f"OpenCV could not encode a {mask.shape} mask as PNG for {path}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(png.tobytes())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask PNG as an HxW uint8 array.

    Raises:
        MaskReadError: when the file is missing, unreadable or not 8-bit single-channel.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskReadError(f"mask file {path} not found; run slfer parse-masks for its image")
    mask = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise MaskReadError(f"mask file {path} is not a readable PNG; delete it and rerun slfer parse-masks")
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise MaskReadError(
            f"mask file {path} has shape {mask.shape} and dtype {mask.dtype}, expected a single 8-bit channel"
        )
    return mask
