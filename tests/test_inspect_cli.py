"""`slfer inspect-dataset`, run as a user would run it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import run_cli

# Per-class counts (train, val) stated in the FER2013 folder's README.
FER2013_COUNTS = {
    "angry": (3995, 467), "disgust": (436, 56), "fear": (4097, 496), "happy": (7215, 895),
    "neutral": (4965, 607), "sad": (4830, 653), "surprise": (3171, 415),
}


def table_row(output: str, name: str) -> list[str]:
    """Return the cells of the table row that starts with `name`."""
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] == name:
            return cells[1:]
    raise AssertionError(f"no table row {name!r} in output:\n{output}")


def build_folder(root: Path, fer2013_images, classes=("happy", "sad")) -> None:
    for name in classes:
        (root / "train" / name).mkdir(parents=True)
        for source in fer2013_images[name][:2]:
            shutil.copyfile(source, root / "train" / name / source.name)


@pytest.mark.fer2013
def test_fer2013_counts(fer2013_root):
    result = run_cli("inspect-dataset", fer2013_root, "--format", "folder")
    assert result.returncode == 0, result.stderr
    assert table_row(result.stdout, "class") == ["train", "val"]
    assert table_row(result.stdout, "total") == ["28709", "3589"]
    for name, (train, val) in FER2013_COUNTS.items():
        assert table_row(result.stdout, name) == [str(train), str(val)]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_unreadable_image_fails(tmp_path, fer2013_images, workers):
    build_folder(tmp_path, fer2013_images)
    (tmp_path / "train" / "happy" / "broken.jpg").write_bytes(b"not a jpeg at all")

    result = run_cli("inspect-dataset", tmp_path, "--format", "folder", "--check-images", "--workers", workers)
    assert result.returncode == 1
    assert "1 unreadable file:" in result.stdout
    assert "train/happy/broken.jpg: not a recognised image format" in result.stdout
    assert "Traceback" not in result.stderr


def test_check_images_passes(tmp_path, fer2013_images):
    build_folder(tmp_path, fer2013_images)
    result = run_cli("inspect-dataset", tmp_path, "--format", "folder", "--check-images", "--workers", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "48x48 (4)" in result.stdout
    assert "usable: 4 images, all images decoded" in result.stdout


def test_missing_file_fails(tmp_path, fer2013_images):
    shutil.copyfile(fer2013_images["fear"][0], tmp_path / "present.jpg")
    (tmp_path / "labels.csv").write_text("path,label\npresent.jpg,fear\nabsent.jpg,fear\n")

    result = run_cli("inspect-dataset", tmp_path, "--format", "csv")
    assert result.returncode == 1
    assert "1 missing file:\n  absent.jpg" in result.stdout
    assert "not usable: 1 missing file" in result.stdout


def test_skipped_labels_listed(tmp_path, fer2013_images):
    build_folder(tmp_path, fer2013_images)
    shutil.copytree(tmp_path / "train" / "sad", tmp_path / "train" / "Contempt")

    result = run_cli("inspect-dataset", tmp_path, "--format", "folder")
    assert result.returncode == 0, result.stderr
    assert "skipped labels (2 samples): contempt 2" in result.stdout


def test_unknown_label_one_line(tmp_path, fer2013_images):
    build_folder(tmp_path, fer2013_images, classes=("happy",))
    shutil.copytree(tmp_path / "train" / "happy", tmp_path / "train" / "bored")

    result = run_cli("inspect-dataset", tmp_path, "--format", "folder")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "'bored'" in result.stderr
    assert "--skip-unknown" in result.stderr


def test_index_labels_with_order(tmp_path, fer2013_images):
    shutil.copyfile(fer2013_images["fear"][0], tmp_path / "a.jpg")
    (tmp_path / "labels.csv").write_text("path,label,split\na.jpg,1,test\n")

    result = run_cli("inspect-dataset", tmp_path / "labels.csv", "--format", "csv", "--label-order", "happy,fear")
    assert result.returncode == 0, result.stderr
    assert table_row(result.stdout, "fear") == ["1"]


def test_empty_dataset_fails(tmp_path):
    result = run_cli("inspect-dataset", tmp_path, "--format", "folder")
    assert result.returncode == 1
    assert "not usable: no labelled images" in result.stdout
