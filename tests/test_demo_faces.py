"""The synthetic demo dataset: layout, determinism and landmark masks that follow the drawn faces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT, run_cli
from pipeline.demo_faces import SIDECAR_NAME, generate_demo_dataset
from pipeline.labels import CLASS_NAMES, PART_NAMES
from pipeline.mask_io import mask_path

PER_CLASS = 3
VAL_PER_CLASS = 1
SIZE = 96

EYE, NOSE, MOUTH = (PART_NAMES.index(part) for part in ("eye", "nose", "mouth"))

# How far, as a fraction of the image side, a mask pixel may lie outside the
# bounding box of the drawn feature it belongs to: 3 pixels at 96x96.
BOX_MARGIN = 0.03


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_dataset(root, per_class=PER_CLASS, val_per_class=VAL_PER_CLASS, size=SIZE, seed=0)
    return root


def file_bytes(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def read_features(root: Path) -> dict[str, dict[str, list[float]]]:
    return json.loads((root / SIDECAR_NAME).read_text())["features"]


def test_class_folders_balanced(demo_root):
    for split, count in (("train", PER_CLASS), ("val", VAL_PER_CLASS)):
        for class_name in CLASS_NAMES:
            names = sorted(path.name for path in (demo_root / split / class_name).iterdir())
            assert names == [f"{class_name}_{index:04d}.png" for index in range(count)], f"{split}/{class_name}"


def test_only_splits_and_sidecar_at_root(demo_root):
    assert sorted(path.name for path in demo_root.iterdir()) == [SIDECAR_NAME, "train", "val"]


def test_images_rgb_at_size(demo_root):
    for path in demo_root.rglob("*.png"):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (SIZE, SIZE, 3), path


def test_images_not_grey(demo_root):
    image = cv2.imread(str(demo_root / "train" / "happy" / "happy_0000.png"))
    assert np.abs(image[..., 0].astype(int) - image[..., 2].astype(int)).mean() > 5


def test_sidecar_lists_every_image(demo_root):
    images = {path.relative_to(demo_root).as_posix() for path in demo_root.rglob("*.png")}
    assert set(read_features(demo_root)) == images


def test_sidecar_boxes_inside_face(demo_root):
    for relative, boxes in read_features(demo_root).items():
        face = boxes["face"]
        for feature in ("eye_left", "eye_right", "nose", "mouth"):
            box = boxes[feature]
            inside = face[0] <= box[0] and face[1] <= box[1] and box[2] <= face[2] and box[3] <= face[3]
            assert inside, f"{relative}: {feature} {box} outside face {face}"


def test_rerun_byte_identical(demo_root, tmp_path):
    generate_demo_dataset(tmp_path, per_class=PER_CLASS, val_per_class=VAL_PER_CLASS, size=SIZE, seed=0)
    assert file_bytes(tmp_path) == file_bytes(demo_root)


def test_rerun_in_place_identical(tmp_path):
    generate_demo_dataset(tmp_path, per_class=1, val_per_class=1, size=48, seed=3)
    first = file_bytes(tmp_path)
    generate_demo_dataset(tmp_path, per_class=1, val_per_class=1, size=48, seed=3)
    assert file_bytes(tmp_path) == first


def test_seed_changes_images(tmp_path):
    generate_demo_dataset(tmp_path / "a", per_class=1, val_per_class=1, size=48, seed=0)
    generate_demo_dataset(tmp_path / "b", per_class=1, val_per_class=1, size=48, seed=1)
    a, b = file_bytes(tmp_path / "a"), file_bytes(tmp_path / "b")
    changed = [name for name in a if name.endswith(".png") and a[name] != b[name]]
    assert len(changed) == 2 * len(CLASS_NAMES)


def test_module_entry_point_matches_function(tmp_path):
    generate_demo_dataset(tmp_path / "function", per_class=1, val_per_class=1, size=48, seed=5)
    command = [sys.executable, "-m", "pipeline.demo_faces", str(tmp_path / "module"),
               "--per-class", "1", "--val-per-class", "1", "--size", "48", "--seed", "5"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert file_bytes(tmp_path / "module") == file_bytes(tmp_path / "function")


def test_tiny_size_rejected(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        generate_demo_dataset(tmp_path, per_class=1, val_per_class=1, size=16)


def fraction_in_boxes(mask: np.ndarray, boxes: list[list[float]], margin: float) -> float:
    """Fraction of the True pixels of `mask` that lie in at least one box grown by `margin`."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0
    inside = np.zeros(len(xs), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside |= (xs >= x0 - margin) & (xs <= x1 + margin) & (ys >= y0 - margin) & (ys <= y1 + margin)
    return float(inside.mean())


def part_at_centre(mask: np.ndarray, box: list[float]) -> int:
    return int(mask[int(round((box[1] + box[3]) / 2)), int(round((box[0] + box[2]) / 2))])


def mask_follows_features(mask: np.ndarray, boxes: dict[str, list[float]]) -> bool:
    """Whether eye, nose and mouth pixels lie on the drawn features and cover their centres."""
    margin = BOX_MARGIN * mask.shape[0]
    eye_boxes = [boxes[name] for name in ("eye_left", "eye_right", "brow_left", "brow_right")]
    checks = (
        fraction_in_boxes(mask == EYE, eye_boxes, margin) >= 0.8,
        fraction_in_boxes(mask == NOSE, [boxes["nose"]], margin) >= 0.8,
        fraction_in_boxes(mask == MOUTH, [boxes["mouth"]], margin) >= 0.8,
        fraction_in_boxes(mask > 0, [boxes["face"]], margin) >= 0.9,
        part_at_centre(mask, boxes["eye_left"]) == EYE,
        part_at_centre(mask, boxes["eye_right"]) == EYE,
        part_at_centre(mask, boxes["nose"]) == NOSE,
        part_at_centre(mask, boxes["mouth"]) == MOUTH,
    )
    return all(checks)


@pytest.fixture(scope="module")
def landmark_masks(demo_root, tmp_path_factory) -> dict[str, np.ndarray]:
    """The masks that `slfer parse-masks --parser landmarks` writes for the demo images."""
    out_dir = tmp_path_factory.mktemp("masks")
    result = run_cli("parse-masks", demo_root, "--format", "folder", "--out", out_dir,
                     "--parser", "landmarks", "--workers", "0")
    assert result.returncode == 0, result.stderr
    masks = {}
    for relative in read_features(demo_root):
        masks[relative] = cv2.imread(str(mask_path(out_dir, relative)), cv2.IMREAD_UNCHANGED)
    return masks


@pytest.mark.slow
def test_landmark_mask_for_every_image(landmark_masks):
    missing = [relative for relative, mask in landmark_masks.items() if mask is None]
    assert missing == []


@pytest.mark.slow
def test_landmark_masks_follow_features(demo_root, landmark_masks):
    features = read_features(demo_root)
    passed = [relative for relative, mask in landmark_masks.items() if mask_follows_features(mask, features[relative])]
    assert len(passed) >= 0.85 * len(features), f"only {len(passed)} of {len(features)} masks follow the drawn face"


@pytest.mark.slow
def test_feature_check_rejects_other_faces(demo_root, landmark_masks):
    # The same check against another image's drawing must mostly fail,
    # otherwise passing it would not show that the landmarks follow the face.
    features = read_features(demo_root)
    names = list(features)
    other = {name: features[names[(index + 5) % len(names)]] for index, name in enumerate(names)}
    passed = [name for name, mask in landmark_masks.items() if mask_follows_features(mask, other[name])]
    assert len(passed) <= 0.5 * len(names)
