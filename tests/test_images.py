"""The image decoder: every pixel format to upright 8-bit RGB, every bad file to ImageDecodeError."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.images import ImageDecodeError, decode_image, decode_image_bytes

EXIF_ORIENTATION_TAG = 0x0112


def random_rgb(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def check_rgb(pixels: np.ndarray, height: int, width: int) -> None:
    assert pixels.shape == (height, width, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags["C_CONTIGUOUS"]


def test_rgb_png_exact(tmp_path):
    rgb = random_rgb()
    pixels = decode_image(save(Image.fromarray(rgb), tmp_path / "rgb.png"))
    check_rgb(pixels, 24, 32)
    assert np.array_equal(pixels, rgb)


def test_rgb_jpeg_close(tmp_path):
    rgb = np.full((16, 16, 3), (200, 40, 90), dtype=np.uint8)
    pixels = decode_image(save(Image.fromarray(rgb), tmp_path / "rgb.jpg", quality=95))
    check_rgb(pixels, 16, 16)
    assert np.abs(pixels.astype(int) - rgb).max() <= 3


def test_grey_to_three_channels(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    pixels = decode_image(save(Image.fromarray(grey, "L"), tmp_path / "grey.png"))
    check_rgb(pixels, 6, 8)
    for channel in range(3):
        assert np.array_equal(pixels[:, :, channel], grey)


def test_one_bit_image(tmp_path):
    bits = np.zeros((4, 4), dtype=bool)
    bits[:2] = True
    pixels = decode_image(save(Image.fromarray(bits), tmp_path / "bits.png"))
    check_rgb(pixels, 4, 4)
    assert (pixels[:2] == 255).all()
    assert (pixels[2:] == 0).all()


def test_grey_alpha_on_black(tmp_path):
    grey = np.full((2, 2), 200, dtype=np.uint8)
    alpha = np.array([[255, 0], [128, 255]], dtype=np.uint8)
    image = Image.fromarray(np.dstack([grey, alpha]), "LA")
    pixels = decode_image(save(image, tmp_path / "grey_alpha.png"))
    check_rgb(pixels, 2, 2)
    assert pixels[0, 0].tolist() == [200, 200, 200]
    assert pixels[0, 1].tolist() == [0, 0, 0]
    assert pixels[1, 0].tolist() == [100, 100, 100]


def test_rgba_on_black(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = (255, 128, 10)
    rgba[..., 3] = [[255, 0], [51, 255]]
    pixels = decode_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    check_rgb(pixels, 2, 2)
    assert pixels[0, 0].tolist() == [255, 128, 10]
    assert pixels[0, 1].tolist() == [0, 0, 0]
    assert pixels[1, 0].tolist() == [51, 26, 2]


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (3, 2), 1)
    image.putpalette([0, 0, 0, 10, 200, 30, 250, 250, 250] + [0] * (253 * 3))
    image.putpixel((0, 0), 2)
    path = save(image, tmp_path / "palette.png", transparency=2)
    assert Image.open(path).info["transparency"] == 2

    pixels = decode_image(path)
    check_rgb(pixels, 2, 3)
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[1, 2].tolist() == [10, 200, 30]


def test_palette_gif(tmp_path):
    image = Image.fromarray(random_rgb(8, 8)).convert("P")
    expected = np.asarray(image.convert("RGB"))
    pixels = decode_image(save(image, tmp_path / "palette.gif"))
    check_rgb(pixels, 8, 8)
    assert np.array_equal(pixels, expected)


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk(tmp_path, suffix):
    rgb = np.full((8, 8, 3), (30, 160, 220), dtype=np.uint8)
    image = Image.fromarray(rgb).convert("CMYK")
    path = save(image, tmp_path / f"cmyk{suffix}")
    assert Image.open(path).mode == "CMYK"

    pixels = decode_image(path)
    check_rgb(pixels, 8, 8)
    assert np.abs(pixels.astype(int) - rgb).max() <= 4


def test_grey_16_bit_scaled(tmp_path):
    grey = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(grey), tmp_path / "grey16.png")
    assert Image.open(path).mode.startswith("I")

    pixels = decode_image(path)
    check_rgb(pixels, 1, 4)
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_rgb_16_bit_scaled(tmp_path, suffix):
    # OpenCV writes BGR order; each sample is scaled by 255/65535 and rounded,
    # so 1000 -> 4 and 65535 -> 255 (the high byte alone would give 3 and 255).
    bgr = np.zeros((2, 3, 3), dtype=np.uint16)
    bgr[0, 0] = (65535, 32768, 1000)
    bgr[1, 2] = (0, 65535, 0)
    path = tmp_path / f"rgb16{suffix}"
    assert cv2.imwrite(str(path), bgr)

    pixels = decode_image(path)
    check_rgb(pixels, 2, 3)
    assert pixels[0, 0].tolist() == [4, 128, 255]
    assert pixels[1, 2].tolist() == [0, 255, 0]


def test_rgba_16_bit_on_black(tmp_path):
    bgra = np.zeros((1, 2, 4), dtype=np.uint16)
    bgra[0, 0] = (0, 0, 65535, 65535)
    bgra[0, 1] = (0, 0, 65535, 0)
    path = tmp_path / "rgba16.png"
    assert cv2.imwrite(str(path), bgra)

    pixels = decode_image(path)
    check_rgb(pixels, 1, 2)
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[0, 1].tolist() == [0, 0, 0]


def test_exif_rotated_jpeg_upright(tmp_path):
    # Upright picture: top half white, bottom half black. Stored rotated by 90
    # degrees counter-clockwise, it needs EXIF orientation 6 (rotate 90
    # clockwise to show), which must bring white back to the top.
    upright = np.zeros((40, 60, 3), dtype=np.uint8)
    upright[:20] = 255
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    path = save(Image.fromarray(stored), tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert np.asarray(Image.open(path)).shape == (60, 40, 3)

    pixels = decode_image(path)
    check_rgb(pixels, 40, 60)
    assert pixels[:15].min() > 240
    assert pixels[25:].max() < 15


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(tmp_path, orientation):
    rgb = random_rgb(6, 9, seed=orientation)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    path = save(Image.fromarray(rgb), tmp_path / "oriented.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))

    pixels = decode_image(path)
    assert np.array_equal(pixels, expected)


def test_one_pixel_image(tmp_path):
    pixels = decode_image(save(Image.new("RGB", (1, 1), (7, 8, 9)), tmp_path / "dot.png"))
    check_rgb(pixels, 1, 1)
    assert pixels[0, 0].tolist() == [7, 8, 9]


def test_non_ascii_path(tmp_path):
    folder = tmp_path / "visages_é_表情"
    folder.mkdir()
    rgb = random_rgb(5, 7)
    pixels = decode_image(save(Image.fromarray(rgb), folder / "笑顔 ü.png"))
    assert np.array_equal(pixels, rgb)


def test_bytes_match_file(tmp_path):
    path = save(Image.fromarray(random_rgb()), tmp_path / "same.png")
    assert np.array_equal(decode_image_bytes(path.read_bytes(), path.name), decode_image(path))


def expect_decode_error(path: Path) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(path)
    assert caught.value.path == str(path)
    assert caught.value.reason
    assert str(path) in str(caught.value)
    return caught.value


def test_missing_file(tmp_path):
    error = expect_decode_error(tmp_path / "absent.jpg")
    assert error.reason == "file not found"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    error = expect_decode_error(path)
    assert error.reason == "empty file"


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    error = expect_decode_error(path)
    assert "not a recognised image format" in error.reason


def test_folder_is_not_image(tmp_path):
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    expect_decode_error(folder)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path, suffix):
    whole = save(Image.fromarray(random_rgb(64, 64)), tmp_path / f"whole{suffix}")
    data = whole.read_bytes()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: len(data) // 2])

    error = expect_decode_error(path)
    assert "truncated" in error.reason


def test_header_only_jpeg(tmp_path):
    data = save(Image.fromarray(random_rgb(64, 64)), tmp_path / "whole.jpg").read_bytes()
    path = tmp_path / "header.jpg"
    path.write_bytes(data[:200])
    expect_decode_error(path)


def test_error_survives_pickle():
    error = ImageDecodeError("faces/a.jpg", "empty file")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.path == "faces/a.jpg"
    assert copy.reason == "empty file"
    assert str(copy) == str(error)


def test_error_is_value_error():
    assert issubclass(ImageDecodeError, ValueError)
