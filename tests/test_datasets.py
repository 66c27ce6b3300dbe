"""Dataset adapters: each layout built from real FER2013 images, each label checked against its source."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from pipeline.datasets import DatasetError, Record, scan_dataset
from pipeline.labels import CLASS_NAMES

# RAF-DB basic labels 1..7 and the FER2013 class folder that supplies their images.
RAFDB_SOURCE_CLASSES = {
    1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral",
}
# The canonical index each RAF-DB label must land on, written out by hand.
RAFDB_EXPECTED_INDEX = {1: 5, 2: 2, 3: 1, 4: 3, 5: 4, 6: 0, 7: 6}

# SFEW 2.0 class folder names and the FER2013 class folder that supplies their images.
SFEW_SOURCE_CLASSES = {
    "Angry": "angry", "Disgust": "disgust", "Fear": "fear", "Happy": "happy",
    "Neutral": "neutral", "Sad": "sad", "Surprise": "surprise",
}


def copy_image(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def check_labels(scan, source_class: dict[str, str]) -> None:
    """Check every record's label against the FER2013 class its image was copied from."""
    assert {record.path for record in scan.records} == set(source_class)
    for record in scan.records:
        assert record.label == CLASS_NAMES.index(source_class[record.path]), record


def build_rafdb(root: Path, fer2013_images, aligned: bool = True, final_newline: bool = False):
    """Write a RAF-DB basic layout: 2 train and 1 test image per label.

    Returns:
        relative image path -> FER2013 class of that image.
    """
    image_dir = root / "Image" / ("aligned" if aligned else "original")
    lines, source_class = [], {}
    number = {"train": 0, "test": 0}
    for raf_label, fer_class in RAFDB_SOURCE_CLASSES.items():
        for index, split in enumerate(("train", "train", "test")):
            number[split] += 1
            name = f"{split}_{number[split]:05d}.jpg"
            stored = f"{split}_{number[split]:05d}_aligned.jpg" if aligned else name
            copy_image(fer2013_images[fer_class][index], image_dir / stored)
            lines.append(f"{name} {raf_label}")
            source_class[stored] = fer_class

    write_label_file(root, lines, final_newline)
    return source_class


def write_label_file(root: Path, lines: list[str], final_newline: bool = False) -> Path:
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text("\n".join(lines) + ("\n" if final_newline else ""))
    return label_file


def build_sfew(root: Path, fer2013_images, aligned: bool = True):
    """Write an SFEW 2.0 layout: 2 Train and 1 Val image per class folder."""
    source_class = {}
    for sfew_class, fer_class in SFEW_SOURCE_CLASSES.items():
        for index, split in enumerate(("Train", "Train", "Val")):
            split_dir = Path(split) / f"{split}_Aligned_Faces" if aligned else Path(split)
            relative = (split_dir / sfew_class / f"{sfew_class}_{index:03d}.png").as_posix()
            copy_image(fer2013_images[fer_class][index], root / relative)
            source_class[relative] = fer_class
    return source_class


def build_folder(root: Path, fer2013_images, class_folders: dict[str, str], split: str = "train"):
    """Write ROOT/<split>/<class folder>/ with 2 images per class folder."""
    source_class = {}
    for folder, fer_class in class_folders.items():
        for index in range(2):
            relative = f"{split}/{folder}/face_{index}.jpg"
            copy_image(fer2013_images[fer_class][index], root / relative)
            source_class[relative] = fer_class
    return source_class


# RAF-DB


def test_rafdb_labels_map(tmp_path, fer2013_images):
    source_class = build_rafdb(tmp_path, fer2013_images)
    scan = scan_dataset(tmp_path, "rafdb")
    check_labels(scan, source_class)


def test_rafdb_each_label_index(tmp_path, fer2013_images):
    build_rafdb(tmp_path, fer2013_images)
    scan = scan_dataset(tmp_path, "rafdb")
    label_of = {record.path: record.label for record in scan.records}
    # Labels are written in order 1..7, 2 train images each: train_00001, train_00002 are label 1.
    for raf_label, expected in RAFDB_EXPECTED_INDEX.items():
        assert label_of[f"train_{2 * raf_label - 1:05d}_aligned.jpg"] == expected
        assert label_of[f"test_{raf_label:05d}_aligned.jpg"] == expected


def test_rafdb_aligned_names(tmp_path, fer2013_images):
    build_rafdb(tmp_path, fer2013_images)
    scan = scan_dataset(tmp_path, "rafdb")
    assert scan.image_root == tmp_path / "Image" / "aligned"
    assert scan.records[0].path == "test_00001_aligned.jpg"
    assert scan.missing == []


def test_rafdb_original_names(tmp_path, fer2013_images):
    source_class = build_rafdb(tmp_path, fer2013_images, aligned=False)
    scan = scan_dataset(tmp_path, "rafdb")
    assert scan.image_root == tmp_path / "Image" / "original"
    check_labels(scan, source_class)


def test_rafdb_splits(tmp_path, fer2013_images):
    build_rafdb(tmp_path, fer2013_images)
    scan = scan_dataset(tmp_path, "rafdb")
    assert scan.splits == ["test", "train"]
    assert scan.class_counts()["train"] == [2] * 7
    assert scan.class_counts()["test"] == [1] * 7


@pytest.mark.parametrize("final_newline", [False, True])
def test_rafdb_final_newline(tmp_path, fer2013_images, final_newline):
    build_rafdb(tmp_path, fer2013_images, final_newline=final_newline)
    scan = scan_dataset(tmp_path, "rafdb")
    assert len(scan.records) == 21
    assert scan.records[-1].path == "train_00014_aligned.jpg"


def test_rafdb_blank_lines(tmp_path, fer2013_images):
    copy_image(fer2013_images["happy"][0], tmp_path / "Image" / "aligned" / "train_00001_aligned.jpg")
    write_label_file(tmp_path, ["", "train_00001.jpg 4", "   ", ""])
    scan = scan_dataset(tmp_path, "rafdb")
    assert scan.records == [Record("train_00001_aligned.jpg", "train", 3)]


def test_rafdb_missing_image(tmp_path, fer2013_images):
    build_rafdb(tmp_path, fer2013_images)
    (tmp_path / "Image" / "aligned" / "train_00003_aligned.jpg").unlink()
    scan = scan_dataset(tmp_path, "rafdb")
    assert scan.missing == ["train_00003_aligned.jpg"]
    assert len(scan.records) == 20


def test_rafdb_unknown_label_error(tmp_path, fer2013_images):
    copy_image(fer2013_images["happy"][0], tmp_path / "Image" / "aligned" / "train_00001_aligned.jpg")
    label_file = write_label_file(tmp_path, ["train_00001.jpg 4", "train_00002.jpg 8"])
    with pytest.raises(DatasetError) as caught:
        scan_dataset(tmp_path, "rafdb")
    message = str(caught.value)
    assert str(label_file) in message
    assert "line 2" in message
    assert "'8'" in message
    assert "1 (surprise)" in message
    assert "7 (neutral)" in message


def test_rafdb_unknown_label_skipped(tmp_path, fer2013_images):
    copy_image(fer2013_images["happy"][0], tmp_path / "Image" / "aligned" / "train_00001_aligned.jpg")
    write_label_file(tmp_path, ["train_00001.jpg 4", "train_00002.jpg 8"])
    scan = scan_dataset(tmp_path, "rafdb", skip_unknown=True)
    assert len(scan.records) == 1
    assert scan.skipped == Counter({"8": 1})


def test_rafdb_bad_prefix(tmp_path):
    (tmp_path / "Image" / "aligned").mkdir(parents=True)
    write_label_file(tmp_path, ["val_00001.jpg 4"])
    with pytest.raises(DatasetError, match="train_ or test_"):
        scan_dataset(tmp_path, "rafdb")


def test_rafdb_no_label_file(tmp_path):
    with pytest.raises(DatasetError, match="list_patition_label.txt"):
        scan_dataset(tmp_path, "rafdb")


# SFEW 2.0


@pytest.mark.parametrize("aligned", [True, False])
def test_sfew_labels_map(tmp_path, fer2013_images, aligned):
    source_class = build_sfew(tmp_path, fer2013_images, aligned=aligned)
    scan = scan_dataset(tmp_path, "sfew")
    check_labels(scan, source_class)


def test_sfew_splits(tmp_path, fer2013_images):
    build_sfew(tmp_path, fer2013_images)
    scan = scan_dataset(tmp_path, "sfew")
    assert scan.splits == ["train", "val"]
    assert scan.class_counts()["train"] == [2] * 7
    assert scan.class_counts()["val"] == [1] * 7


def test_sfew_top_level_aligned(tmp_path, fer2013_images):
    copy_image(fer2013_images["sad"][0], tmp_path / "Val_Aligned_Faces" / "Sad" / "a.png")
    scan = scan_dataset(tmp_path, "sfew")
    assert scan.records == [Record("Val_Aligned_Faces/Sad/a.png", "val", 4)]


def test_sfew_no_splits(tmp_path):
    (tmp_path / "Angry").mkdir()
    with pytest.raises(DatasetError, match="no SFEW split folders"):
        scan_dataset(tmp_path, "sfew")


# Folder per class


def test_folder_labels_map(tmp_path, fer2013_images):
    class_folders = {name: name for name in fer2013_images}
    source_class = build_folder(tmp_path, fer2013_images, class_folders)
    scan = scan_dataset(tmp_path, "folder")
    check_labels(scan, source_class)


def test_folder_synonyms_and_case(tmp_path, fer2013_images):
    class_folders = {
        "Anger": "angry", "DISGUSTED": "disgust", "Fearful": "fear", "Happiness": "happy",
        "sadness": "sad", "Surprised": "surprise", "NEUTRAL": "neutral",
    }
    source_class = build_folder(tmp_path, fer2013_images, class_folders)
    scan = scan_dataset(tmp_path, "folder")
    check_labels(scan, source_class)


def test_folder_split_lower_case(tmp_path, fer2013_images):
    build_folder(tmp_path, fer2013_images, {"happy": "happy"}, split="Test")
    scan = scan_dataset(tmp_path, "folder")
    assert scan.splits == ["test"]


def test_folder_contempt_skipped(tmp_path, fer2013_images):
    build_folder(tmp_path, fer2013_images, {"happy": "happy", "Contempt": "neutral"})
    scan = scan_dataset(tmp_path, "folder")
    assert len(scan.records) == 2
    assert scan.skipped == Counter({"contempt": 2})


def test_folder_unknown_label_error(tmp_path, fer2013_images):
    build_folder(tmp_path, fer2013_images, {"happy": "happy", "bored": "neutral"})
    with pytest.raises(DatasetError) as caught:
        scan_dataset(tmp_path, "folder")
    message = str(caught.value)
    assert str(tmp_path / "train" / "bored") in message
    assert "'bored'" in message
    assert ", ".join(CLASS_NAMES) in message
    assert "--skip-unknown" in message


def test_folder_unknown_label_skipped(tmp_path, fer2013_images):
    build_folder(tmp_path, fer2013_images, {"happy": "happy", "Bored": "neutral"})
    scan = scan_dataset(tmp_path, "folder", skip_unknown=True)
    assert len(scan.records) == 2
    assert scan.skipped == Counter({"bored": 2})


def test_folder_ignores_other_files(tmp_path, fer2013_images):
    build_folder(tmp_path, fer2013_images, {"happy": "happy"})
    class_dir = tmp_path / "train" / "happy"
    copy_image(fer2013_images["happy"][2], class_dir / "UPPER.JPG")
    copy_image(fer2013_images["happy"][3], class_dir / "nested" / "deep.jpeg")
    copy_image(fer2013_images["happy"][4], class_dir / ".hidden.jpg")
    copy_image(fer2013_images["happy"][5], class_dir / ".cache" / "thumb.jpg")
    (class_dir / "notes.txt").write_text("not an image")
    (tmp_path / "README.md").write_text("about this dataset")

    scan = scan_dataset(tmp_path, "folder")
    assert [record.path for record in scan.records] == [
        "train/happy/UPPER.JPG",
        "train/happy/face_0.jpg",
        "train/happy/face_1.jpg",
        "train/happy/nested/deep.jpeg",
    ]


def test_folder_without_splits(tmp_path, fer2013_images):
    root = tmp_path / "dataset"
    copy_image(fer2013_images["happy"][0], root / "happy" / "a.jpg")
    with pytest.raises(DatasetError, match="without split folders"):
        scan_dataset(root, "folder")


def test_folder_split_given_as_root(tmp_path, fer2013_images):
    for split in ("train", "test"):
        copy_image(fer2013_images["happy"][0], tmp_path / "fer" / split / "happy" / "a.jpg")
    with pytest.raises(DatasetError, match=f"pass its parent {tmp_path / 'fer'} as ROOT"):
        scan_dataset(tmp_path / "fer" / "train", "folder")


def test_folder_natural_order(tmp_path, fer2013_images):
    for name in ("img10.jpg", "img2.jpg", "img1.jpg"):
        copy_image(fer2013_images["fear"][0], tmp_path / "val" / "fear" / name)
    copy_image(fer2013_images["fear"][0], tmp_path / "train" / "fear" / "img9.jpg")
    scan = scan_dataset(tmp_path, "folder")
    assert [record.path for record in scan.records] == [
        "train/fear/img9.jpg",
        "val/fear/img1.jpg",
        "val/fear/img2.jpg",
        "val/fear/img10.jpg",
    ]


def test_scan_repeatable(tmp_path, fer2013_images):
    build_folder(tmp_path, fer2013_images, {name: name for name in fer2013_images})
    first = scan_dataset(tmp_path, "folder")
    second = scan_dataset(tmp_path, "folder")
    assert first.records == second.records


def test_path_of_exists(tmp_path, fer2013_images):
    build_folder(tmp_path, fer2013_images, {"sad": "sad"})
    scan = scan_dataset(tmp_path, "folder")
    assert all(scan.path_of(record).is_file() for record in scan.records)


# CSV


def build_csv(root: Path, fer2013_images, rows: list[tuple[str, str, str]], header: str = "path,label,split"):
    """Copy one FER2013 image per row to root/images/ and write root/labels.csv.

    Args:
        rows: (FER2013 class supplying the image, label cell, split cell).

    Returns:
        relative image path -> FER2013 class of that image.
    """
    lines, source_class = [header], {}
    for number, (fer_class, label, split) in enumerate(rows):
        relative = f"images/{number:03d}.jpg"
        copy_image(fer2013_images[fer_class][number % 20], root / relative)
        cells = [relative, label] + ([split] if "split" in header else [])
        lines.append(",".join(cells))
        source_class[relative] = fer_class
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return source_class


def test_csv_labels_by_name(tmp_path, fer2013_images):
    rows = [(name, name, "train") for name in fer2013_images]
    rows += [("angry", "Anger", "test"), ("happy", "HAPPINESS", "test"), ("surprise", "surprised", "test")]
    source_class = build_csv(tmp_path, fer2013_images, rows)
    scan = scan_dataset(tmp_path, "csv")
    check_labels(scan, source_class)


def test_csv_labels_by_index(tmp_path, fer2013_images):
    # The CSV numbers its classes in RAF-DB order, 0-based.
    order = [RAFDB_SOURCE_CLASSES[number] for number in range(1, 8)]
    rows = [(fer_class, str(index), "train") for index, fer_class in enumerate(order)]
    source_class = build_csv(tmp_path, fer2013_images, rows)
    scan = scan_dataset(tmp_path, "csv", label_order=",".join(order))
    check_labels(scan, source_class)


def test_csv_index_needs_order(tmp_path, fer2013_images):
    build_csv(tmp_path, fer2013_images, [("happy", "3", "train")])
    with pytest.raises(DatasetError) as caught:
        scan_dataset(tmp_path, "csv")
    message = str(caught.value)
    assert str(tmp_path / "labels.csv") in message
    assert "line 2" in message
    assert "--label-order" in message


def test_csv_index_out_of_range(tmp_path, fer2013_images):
    build_csv(tmp_path, fer2013_images, [("happy", "2", "train")])
    with pytest.raises(DatasetError, match="outside --label-order"):
        scan_dataset(tmp_path, "csv", label_order="sad,happy")


def test_csv_order_contempt_skipped(tmp_path, fer2013_images):
    build_csv(tmp_path, fer2013_images, [("happy", "0", "train"), ("sad", "1", "train")])
    scan = scan_dataset(tmp_path, "csv", label_order=["happy", "contempt"])
    assert [record.label for record in scan.records] == [3]
    assert scan.skipped == Counter({"contempt": 1})


def test_csv_unknown_label_error(tmp_path, fer2013_images):
    build_csv(tmp_path, fer2013_images, [("happy", "happy", "train"), ("sad", "gloomy", "train")])
    with pytest.raises(DatasetError) as caught:
        scan_dataset(tmp_path, "csv")
    message = str(caught.value)
    assert str(tmp_path / "labels.csv") in message
    assert "line 3" in message
    assert "'gloomy'" in message
    assert ", ".join(CLASS_NAMES) in message


def test_csv_file_as_root(tmp_path, fer2013_images):
    build_csv(tmp_path, fer2013_images, [("happy", "happy", "val")])
    scan = scan_dataset(tmp_path / "labels.csv", "csv")
    assert scan.image_root == tmp_path
    assert scan.records == [Record("images/000.jpg", "val", 3)]


def test_csv_default_split(tmp_path, fer2013_images):
    build_csv(tmp_path, fer2013_images, [("sad", "sad", "")], header="path,label")
    scan = scan_dataset(tmp_path, "csv")
    assert scan.splits == ["train"]


def test_csv_missing_image(tmp_path, fer2013_images):
    build_csv(tmp_path, fer2013_images, [("sad", "sad", "train"), ("fear", "fear", "train")])
    (tmp_path / "images" / "001.jpg").unlink()
    scan = scan_dataset(tmp_path, "csv")
    assert scan.missing == ["images/001.jpg"]
    assert len(scan.records) == 1


def test_csv_path_outside_root(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\n../elsewhere.jpg,happy\n")
    with pytest.raises(DatasetError, match="outside"):
        scan_dataset(tmp_path, "csv")


def test_csv_missing_column(tmp_path):
    (tmp_path / "labels.csv").write_text("file,label\na.jpg,happy\n")
    with pytest.raises(DatasetError, match="path"):
        scan_dataset(tmp_path, "csv")


def test_label_order_needs_csv(tmp_path, fer2013_images):
    build_folder(tmp_path, fer2013_images, {"sad": "sad"})
    with pytest.raises(DatasetError, match="only to --format csv"):
        scan_dataset(tmp_path, "folder", label_order="sad,happy")
