"""The one image decoder of every stage: any common image file to 8-bit RGB.

`decode_image` applies the EXIF orientation and converts every pixel format
Pillow reads (1-bit, grey, grey+alpha, palette, RGBA, CMYK, 16-bit grey and
colour, 32-bit integer and float grey) to an HxWx3 uint8 RGB array. Alpha is
composited on black, so a transparent pixel becomes black whatever colour it
stores. Every failure raises `ImageDecodeError`; the decoder never returns None.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

# EXIF tag 0x0112. Values 1..8 give the flip or rotation that shows the stored
# pixels upright (TIFF 6.0 / EXIF 2.3 definition).
EXIF_ORIENTATION_TAG = 0x0112

# Pillow modes that carry an alpha channel, and the modes it reads as 32-bit
# integer or float grey (16-bit grey may also arrive as "I" in some formats).
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
WIDE_GREY_MODES = frozenset({"I", "F"})


class ImageDecodeError(ValueError):
    """An image file that is missing, empty, truncated or not a readable image.

    Attributes:
        path: the file (or name) that failed.
        reason: what was wrong, in a few words.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        # Both values go to ValueError's args so the error pickles across
        # worker processes unchanged.
        super().__init__(os.fspath(path), reason)
        self.path = os.fspath(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot decode image {self.path}: {self.reason}"


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as upright 8-bit RGB.

    Args:
        path: the image file; any path the OS accepts, non-ASCII included.

    Returns:
        A C-contiguous HxWx3 uint8 array in RGB order.

    Raises:
        ImageDecodeError: when the file is missing, empty, truncated, or not an image.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except OSError as error:
        raise ImageDecodeError(path, error.strerror or str(error)) from None
    return decode_image_bytes(data, path)


def decode_image_bytes(data: bytes, name: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Decode an encoded image held in memory as upright 8-bit RGB.

    Args:
        data: the whole encoded file.
        name: the file name used in error messages.

    Returns:
        A C-contiguous HxWx3 uint8 array in RGB order.

    Raises:
        ImageDecodeError: when `data` is empty, truncated, or not an image.
    """
    if not data:
        raise ImageDecodeError(name, "empty file")

    image, has_16_bit_colour = _open_and_load(data, name)
    orientation = _exif_orientation(image)
    rgb = _wide_colour_to_rgb(data) if has_16_bit_colour else None
    if rgb is None:
        rgb = _to_rgb(image)

    rgb = _apply_orientation(rgb, orientation)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _open_and_load(data: bytes, name: str | os.PathLike) -> tuple[Image.Image, bool]:
    """Open `data` with Pillow and decode all pixels, so truncation shows now.

    Returns:
        The loaded image, and whether its samples were 16-bit colour, which
        can only be read from the tile list before loading.
    """
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning (more than 89 megapixels) is not an error here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            has_16_bit_colour = _has_16_bit_colour(image)
            image.load()
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not a recognised image format") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(name, str(error)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow reports truncated and corrupt data as OSError ("image file is
        # truncated"), SyntaxError (broken PNG chunks) or EOFError. NOTE: a PNG
        # cut after its last pixel byte (so only checksums and IEND are lost)
        # still decodes, because Pillow 13 does not require them.
        raise ImageDecodeError(name, f"corrupt or truncated image data ({error})") from None
    return image, has_16_bit_colour


def _exif_orientation(image: Image.Image) -> int:
    """Return the EXIF orientation 1..8 of `image`, 1 when absent or invalid."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError) as error:
        # A broken EXIF block does not make the pixels unreadable.
        logger.debug("ignoring unreadable EXIF data: %s", error)
        return 1
    if orientation not in range(1, 9):
        return 1
    return int(orientation)


def _has_16_bit_colour(image: Image.Image) -> bool:
    """Tell whether Pillow read 16-bit colour samples, which it cuts to their high byte."""
    if image.mode not in ("RGB", "RGBA", "LA"):
        return False
    raw_modes = [tile.args[0] if isinstance(tile.args, tuple) else tile.args for tile in image.tile]
    return any(isinstance(raw_mode, str) and ";16" in raw_mode for raw_mode in raw_modes)


def _wide_colour_to_rgb(data: bytes) -> np.ndarray | None:
    """Decode 16-bit colour with OpenCV at full depth and round it to 8 bits.

    Returns None when OpenCV cannot read the data, so the caller falls back to
    Pillow's 8-bit result (the high byte of each sample).
    """
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint16:
        return None

    samples = pixels.astype(np.float32) / 65535.0
    if samples.ndim == 2:
        samples = np.repeat(samples[:, :, None], 3, axis=2)
    elif samples.shape[2] == 4:
        samples = cv2.cvtColor(samples, cv2.COLOR_BGRA2RGBA)
        samples = samples[:, :, :3] * samples[:, :, 3:]
    else:
        samples = cv2.cvtColor(samples, cv2.COLOR_BGR2RGB)
    return np.rint(samples * 255.0).astype(np.uint8)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to an HxWx3 uint8 RGB array."""
    if image.mode in WIDE_GREY_MODES or image.mode.startswith("I;16"):
        grey = _wide_grey_to_uint8(np.asarray(image), image.mode)
        return np.repeat(grey[:, :, None], 3, axis=2)

    has_alpha = image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255
        return rgb.astype(np.uint8)

    return np.asarray(image.convert("RGB"))


def _wide_grey_to_uint8(grey: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float grey samples linearly to 0..255."""
    values = grey.astype(np.float64)
    if mode.startswith("I;16") or (mode == "I" and values.min() >= 0 and values.max() <= 65535):
        return np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
    if mode == "F" and values.min() >= 0 and values.max() <= 1:
        return np.rint(values * 255.0).astype(np.uint8)

    # NOTE: 32-bit and float images have no fixed white level, so each is
    # stretched from its own minimum to maximum. Two such files of one scene
    # may then differ in brightness.
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(grey.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Flip or rotate HxWxC pixels as EXIF orientation 1..8 requires, to show them upright."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, k=-1)
    if orientation == 7:
        return pixels[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(pixels, k=1)
    return pixels
