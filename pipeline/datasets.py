"""Dataset adapters: RAF-DB, SFEW 2.0, folder-per-class and CSV layouts as one record list.

Every adapter maps its labels into the canonical class order of
`pipeline.labels.CLASS_NAMES`. `scan_dataset` picks the adapter from the
`ADAPTERS` table, so a new layout is one function registered there (and its
name added to `cli.DATASET_FORMATS`).

Records are sorted by split, then by the natural order of their path
("img2" before "img10"), so every run lists the records in the same order.
"""

from __future__ import annotations

import csv
import logging
import os
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.labels import CLASS_NAMES, NUM_CLASSES, UnknownLabelError, class_index

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# RAF-DB basic: labels 1..7 of `EmoLabel/list_patition_label.txt` (the file
# name is misspelt in the dataset itself).
RAFDB_LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
RAFDB_CLASSES = ("surprise", "fear", "disgust", "happy", "sad", "angry", "neutral")
RAFDB_SPLITS = ("train", "test")

# SFEW 2.0 split folders: Train and Val, each holding class folders directly
# or inside a `<Split>_Aligned_Faces` folder.
SFEW_SPLIT_PATTERN = re.compile(r"^(train|val)(_aligned_faces\w*)?$", re.IGNORECASE)
SFEW_ALIGNED_PATTERN = re.compile(r"^(train|val)_aligned_faces\w*$", re.IGNORECASE)

CSV_FILE_NAME = "labels.csv"
CSV_DEFAULT_SPLIT = "train"

SKIP_HINT = "pass --skip-unknown to skip and count such samples"


class DatasetError(ValueError):
    """A dataset that cannot be read: wrong layout, malformed label file, or unknown label."""


@dataclass(frozen=True)
class Record:
    """One labelled image.

    Attributes:
        path: POSIX path relative to the scan's image root.
        split: lower-case split name, such as "train", "val" or "test".
        label: canonical class index 0..6.
    """

    path: str
    split: str
    label: int


@dataclass
class DatasetScan:
    """Records, skipped labels and missing files that an adapter found in a dataset.

    Attributes:
        image_root: folder that record paths are relative to.
        records: the labelled images, sorted by split and natural path order.
        skipped: label as written (lower-case) -> number of samples skipped for
            it, such as "contempt" or, with skip_unknown, any unknown label.
        missing: image paths, relative to image_root, that a label file names
            but that do not exist.
    """

    image_root: Path
    records: list[Record] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)

    @property
    def splits(self) -> list[str]:
        """Split names present in the records, sorted."""
        return sorted({record.split for record in self.records})

    def path_of(self, record: Record) -> Path:
        """Return the absolute path of a record's image."""
        return self.image_root / record.path

    def class_counts(self) -> dict[str, list[int]]:
        """Count records per split and class.

        Returns:
            split -> list of NUM_CLASSES counts in canonical class order, splits sorted.
        """
        counts = {split: [0] * NUM_CLASSES for split in self.splits}
        for record in self.records:
            counts[record.split][record.label] += 1
        return counts


class LabelResolver:
    """Map dataset label names to class indices, deciding which samples are skipped."""

    def __init__(self, skip_unknown: bool):
        self.skip_unknown = skip_unknown

    def resolve(self, name: str, where: str, fix: str) -> int | None:
        """Return the class index of `name`, or None when its samples are skipped.

        Args:
            name: the label as written in the dataset.
            where: the file, folder or line it comes from, for the error message.
            fix: what the user can change, such as "rename the folder".

        Raises:
            DatasetError: for an unknown label without skip_unknown.
        """
        try:
            return class_index(name)
        except UnknownLabelError as error:
            if self.skip_unknown:
                return None
            raise DatasetError(f"{where}: {error}; {fix} or {SKIP_HINT}") from None


def natural_key(text: str) -> list[str | int]:
    """Sort key that orders digit runs by value: "img2" before "img10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def is_hidden(name: str) -> bool:
    """Tell whether a file or folder name is hidden or macOS archive debris."""
    return name.startswith(".") or name == "__MACOSX"


def is_image_file(name: str) -> bool:
    """Tell whether a file name has an image extension (any case) and is not hidden."""
    return not is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> Iterator[str]:
    """Yield the image files under `folder`, recursively, as POSIX paths relative to it."""
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [name for name in subdirectories if not is_hidden(name)]
        relative = Path(directory).relative_to(folder).as_posix()
        for name in files:
            if is_image_file(name):
                yield name if relative == "." else f"{relative}/{name}"


def list_subfolders(folder: Path) -> list[Path]:
    """Return the non-hidden subfolders of `folder`, sorted by name."""
    return sorted(
        (entry for entry in folder.iterdir() if entry.is_dir() and not is_hidden(entry.name)),
        key=lambda entry: natural_key(entry.name),
    )


def add_class_folders(
    scan: DatasetScan, split_dir: Path, split: str, labels: LabelResolver,
) -> None:
    """Add the images of every class folder in `split_dir` to `scan`."""
    for class_dir in list_subfolders(split_dir):
        images = list(list_images(class_dir))
        label = labels.resolve(class_dir.name, f"class folder {class_dir}", "rename the folder")
        if label is None:
            scan.skipped[class_dir.name.strip().lower()] += len(images)
            continue

        prefix = class_dir.relative_to(scan.image_root).as_posix()
        scan.records.extend(Record(f"{prefix}/{image}", split, label) for image in images)


def scan_folder(root: Path, *, skip_unknown: bool, **_) -> DatasetScan:
    """Read ROOT/<split>/<class>/* (ImageFolder per split); split names are lower-cased.

    Images may sit in subfolders of a class folder. Files directly under ROOT
    or a split folder are ignored.
    """
    labels = LabelResolver(skip_unknown)
    scan = DatasetScan(image_root=root)
    split_dirs = list_subfolders(root)
    reject_missing_split_level(root, split_dirs)

    for split_dir in split_dirs:
        add_class_folders(scan, split_dir, split_dir.name.lower(), labels)
    return scan


def reject_missing_split_level(root: Path, split_dirs: list[Path]) -> None:
    """Raise DatasetError when ROOT contains class folders of images instead of split folders."""
    for folder in split_dirs:
        if not names_a_class(folder.name):
            continue
        if any(is_image_file(entry.name) for entry in folder.iterdir() if entry.is_file()):
            if has_sibling_splits(root):
                raise DatasetError(
                    f"{folder} contains images directly, and {root} looks like one split of a dataset "
                    f"beside other splits; pass its parent {root.parent} as ROOT (ROOT/<split>/<class>/*)"
                )
            raise DatasetError(
                f"{folder} contains images directly, so {root} looks like class folders without "
                f"split folders; move them under {root / 'train'} (ROOT/<split>/<class>/*)"
            )


def has_sibling_splits(root: Path) -> bool:
    """Tell whether a folder beside `root` also contains class folders, as the other splits would."""
    siblings = [folder for folder in list_subfolders(root.parent) if folder != root]
    return any(names_a_class(folder.name) for sibling in siblings for folder in list_subfolders(sibling))


def names_a_class(name: str) -> bool:
    """Tell whether a folder name is one of the seven classes or an alias of one."""
    try:
        class_index(name)
    except UnknownLabelError:
        return False
    return True


def scan_sfew(root: Path, *, skip_unknown: bool, **_) -> DatasetScan:
    """Read SFEW 2.0: Train and Val folders of class folders, maybe inside <Split>_Aligned_Faces."""
    labels = LabelResolver(skip_unknown)
    scan = DatasetScan(image_root=root)
    split_dirs = find_sfew_splits(root)

    for split, split_dir in sorted(split_dirs.items()):
        add_class_folders(scan, split_dir, split, labels)
    return scan


def find_sfew_splits(root: Path) -> dict[str, Path]:
    """Return split name ("train", "val") -> the folder that contains its class folders."""
    split_dirs: dict[str, Path] = {}
    for folder in list_subfolders(root):
        match = SFEW_SPLIT_PATTERN.match(folder.name)
        if match is None:
            continue

        split = match.group(1).lower()
        if split in split_dirs:
            raise DatasetError(
                f"SFEW split {split!r} is found twice, in {split_dirs[split]} and {folder}; "
                f"keep one of them under {root}"
            )
        aligned = [sub for sub in list_subfolders(folder) if SFEW_ALIGNED_PATTERN.match(sub.name)]
        if len(aligned) > 1:
            raise DatasetError(
                f"{folder} contains several aligned-face folders ({', '.join(sub.name for sub in aligned)}); "
                f"keep one of them"
            )
        split_dirs[split] = aligned[0] if aligned else folder

    if not split_dirs:
        raise DatasetError(
            f"no SFEW split folders (Train, Val or Train_Aligned_Faces, Val_Aligned_Faces) in {root}"
        )
    return split_dirs


def scan_rafdb(root: Path, *, skip_unknown: bool, **_) -> DatasetScan:
    """Read RAF-DB basic: the EmoLabel list and Image/aligned (or Image/original) images.

    Aligned images are named `<stem>_aligned.jpg` for a label-file name
    `<stem>.jpg`; originals keep the label-file name. The split is the name's
    prefix, train or test.
    """
    label_file = root / RAFDB_LABEL_FILE
    if not label_file.is_file():
        raise DatasetError(f"RAF-DB label file not found: {label_file}; pass the RAF-DB 'basic' folder as ROOT")
    image_root, aligned = find_rafdb_images(root)

    scan = DatasetScan(image_root=image_root)
    existing = set(os.listdir(image_root))
    seen: dict[str, int] = {}
    for line_number, name, value in read_rafdb_lines(label_file):
        where = f"{label_file} line {line_number}"
        if name in seen:
            raise DatasetError(f"{where}: {name!r} is listed again (first on line {seen[name]}); remove one line")
        seen[name] = line_number

        label = resolve_rafdb_label(value, where, skip_unknown)
        if label is None:
            scan.skipped[value] += 1
            continue

        split = rafdb_split(name, where)
        path = f"{Path(name).stem}_aligned.jpg" if aligned else name
        if path in existing:
            scan.records.append(Record(path, split, label))
        else:
            scan.missing.append(path)
    return scan


def find_rafdb_images(root: Path) -> tuple[Path, bool]:
    """Return the RAF-DB image folder and whether it contains the aligned images."""
    aligned_dir = root / "Image" / "aligned"
    if aligned_dir.is_dir():
        return aligned_dir, True
    original_dir = root / "Image" / "original"
    if original_dir.is_dir():
        return original_dir, False
    raise DatasetError(f"RAF-DB image folder not found: neither {aligned_dir} nor {original_dir} exists")


def read_rafdb_lines(label_file: Path) -> Iterator[tuple[int, str, str]]:
    """Yield (line number, image name, label text) of each non-blank line of the label file."""
    text = label_file.read_text(encoding="utf-8-sig")
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DatasetError(
                f"{label_file} line {line_number}: expected '<image name> <label 1-7>', got {line.strip()!r}"
            )
        yield line_number, fields[0], fields[1]


def resolve_rafdb_label(value: str, where: str, skip_unknown: bool) -> int | None:
    """Map a RAF-DB label 1..7 to the canonical index; None when it is skipped."""
    if value.isdigit() and 1 <= int(value) <= len(RAFDB_CLASSES):
        return CLASS_NAMES.index(RAFDB_CLASSES[int(value) - 1])
    if skip_unknown:
        return None
    accepted = ", ".join(f"{number} ({name})" for number, name in enumerate(RAFDB_CLASSES, start=1))
    raise DatasetError(f"{where}: label {value!r} is not one of {accepted}; fix the line or {SKIP_HINT}")


def rafdb_split(name: str, where: str) -> str:
    """Return the split of a RAF-DB image name from its train_/test_ prefix."""
    split = name.split("_", 1)[0].lower()
    if split not in RAFDB_SPLITS:
        raise DatasetError(f"{where}: image name {name!r} does not start with train_ or test_")
    return split


def scan_csv(
    root: Path, *, skip_unknown: bool, label_order: Sequence[str] | None = None, **_,
) -> DatasetScan:
    """Read a CSV file with a header row and columns path,label[,split].

    ROOT is the CSV file or a folder holding labels.csv. Paths are relative to
    the CSV's folder. A label is a class name (synonyms accepted) or an integer
    index into `label_order`. Rows without a split column are in split "train".
    """
    csv_file = root / CSV_FILE_NAME if root.is_dir() else root
    if not csv_file.is_file():
        raise DatasetError(f"CSV label file not found: {csv_file}; pass the CSV file or its folder as ROOT")
    labels = LabelResolver(skip_unknown)
    scan = DatasetScan(image_root=csv_file.parent)
    index_labels = resolve_label_order(label_order, labels) if label_order else None

    seen: dict[str, int] = {}
    for line_number, row in read_csv_rows(csv_file):
        where = f"{csv_file} line {line_number}"
        path = normalise_csv_path(row["path"], scan.image_root, where)
        if path in seen:
            raise DatasetError(f"{where}: {path!r} is listed again (first on line {seen[path]}); remove one row")
        seen[path] = line_number

        raw_label = row["label"].strip()
        label = resolve_csv_label(raw_label, index_labels, labels, where)
        if label is None:
            skipped_name = index_labels[int(raw_label)][0] if is_known_index(raw_label, index_labels) else raw_label
            scan.skipped[skipped_name.lower()] += 1
            continue

        split = row.get("split", CSV_DEFAULT_SPLIT).strip().lower()
        if not split:
            raise DatasetError(f"{where}: empty split; give every row a split or drop the split column")
        if (scan.image_root / path).is_file():
            scan.records.append(Record(path, split, label))
        else:
            scan.missing.append(path)
    return scan


def resolve_label_order(label_order: Sequence[str], labels: LabelResolver) -> list[tuple[str, int | None]]:
    """Map each name of --label-order to (name, class index or None when skipped)."""
    resolved = []
    for name in label_order:
        try:
            resolved.append((name, class_index(name)))
        except UnknownLabelError as error:
            if not labels.skip_unknown:
                raise DatasetError(f"--label-order: {error}; fix the name or {SKIP_HINT}") from None
            resolved.append((name, None))
    return resolved


def read_csv_rows(csv_file: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row with lower-case column names) of each non-blank CSV row."""
    with csv_file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [column.strip().lower() for column in next(reader, [])]
        missing_columns = [column for column in ("path", "label") if column not in header]
        if missing_columns:
            raise DatasetError(
                f"{csv_file}: header row {header} lacks column(s) {', '.join(missing_columns)}; "
                f"the first row must name the columns path,label[,split]"
            )

        for values in reader:
            if not any(value.strip() for value in values):
                continue
            if len(values) != len(header):
                raise DatasetError(
                    f"{csv_file} line {reader.line_num}: expected {len(header)} values "
                    f"({', '.join(header)}), got {len(values)}"
                )
            yield reader.line_num, dict(zip(header, values))


def normalise_csv_path(text: str, image_root: Path, where: str) -> str:
    """Turn a CSV path into a POSIX path relative to the CSV's folder, rejecting ones outside it."""
    path = text.strip().replace("\\", "/")
    if not path:
        raise DatasetError(f"{where}: empty path")
    if posixpath.isabs(path):
        try:
            path = Path(path).relative_to(image_root).as_posix()
        except ValueError:
            raise DatasetError(f"{where}: absolute path {path!r} is outside {image_root}; make it relative") from None

    path = posixpath.normpath(path)
    if path == ".." or path.startswith("../"):
        raise DatasetError(f"{where}: path {text.strip()!r} points outside {image_root}; move the image under it")
    return path


def is_known_index(text: str, index_labels: list[tuple[str, int | None]] | None) -> bool:
    """Tell whether `text` is an integer index into --label-order."""
    return index_labels is not None and text.isdigit() and int(text) < len(index_labels)


def resolve_csv_label(
    text: str,
    index_labels: list[tuple[str, int | None]] | None,
    labels: LabelResolver,
    where: str,
) -> int | None:
    """Map a CSV label (class name or integer index) to the canonical index; None when skipped."""
    if not re.fullmatch(r"[+-]?\d+", text):
        return labels.resolve(text, where, "fix the row")

    if index_labels is None:
        raise DatasetError(
            f"{where}: label {text!r} is an integer index but no --label-order was given; "
            f"pass the class names in the CSV's order, e.g. --label-order {','.join(CLASS_NAMES)}"
        )
    if is_known_index(text, index_labels):
        return index_labels[int(text)][1]
    if labels.skip_unknown:
        return None
    raise DatasetError(
        f"{where}: label index {text!r} is outside --label-order, which names "
        f"{len(index_labels)} classes (0 to {len(index_labels) - 1}); fix the row or {SKIP_HINT}"
    )


AdapterFunction = Callable[..., DatasetScan]

# Format name -> adapter. Each adapter takes ROOT and the keyword arguments
# skip_unknown and label_order, and returns an unsorted DatasetScan.
ADAPTERS: dict[str, AdapterFunction] = {
    "rafdb": scan_rafdb,
    "sfew": scan_sfew,
    "folder": scan_folder,
    "csv": scan_csv,
}


def parse_label_order(label_order: str | Sequence[str] | None) -> list[str] | None:
    """Split a comma-separated --label-order into stripped names; None stays None."""
    if label_order is None:
        return None
    names = label_order.split(",") if isinstance(label_order, str) else list(label_order)
    names = [name.strip() for name in names]
    if not names or any(not name for name in names):
        raise DatasetError(f"--label-order {label_order!r} has an empty name; give comma-separated class names")
    return names


def scan_dataset(
    root: str | os.PathLike,
    fmt: str,
    label_order: str | Sequence[str] | None = None,
    skip_unknown: bool = False,
) -> DatasetScan:
    """List the labelled images of a dataset in canonical class indices.

    Args:
        root: dataset root (for csv, the CSV file or the folder holding labels.csv).
        fmt: one of ADAPTERS: rafdb, sfew, folder or csv.
        label_order: csv only: class names giving the meaning of integer labels
            0, 1, ..., as a comma-separated string or a sequence.
        skip_unknown: skip and count samples with an unknown label instead of failing.

    Returns:
        The scan, with records sorted by (split, natural path order). It may hold
        no records; callers decide whether that is an error.

    Raises:
        DatasetError: when ROOT does not match the layout, a label file is
            malformed, or a label is unknown (without skip_unknown).
    """
    root = Path(root)
    if fmt not in ADAPTERS:
        raise DatasetError(f"unknown dataset format {fmt!r}; use one of {', '.join(ADAPTERS)}")
    if not root.exists():
        raise DatasetError(f"dataset root not found: {root}")
    if fmt != "csv" and not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder; --format {fmt} needs the dataset's folder")
    names = parse_label_order(label_order)
    if names is not None and fmt != "csv":
        raise DatasetError(f"--label-order applies only to --format csv, not {fmt}; remove it")

    scan = ADAPTERS[fmt](root, skip_unknown=skip_unknown, label_order=names)
    scan.records.sort(key=lambda record: (record.split, natural_key(record.path)))
    scan.missing.sort(key=natural_key)
    logger.debug("%s dataset %s: %d records, %d skipped, %d missing",
                 fmt, root, len(scan.records), sum(scan.skipped.values()), len(scan.missing))
    return scan


def subset_evenly(records: Sequence[Record], limit: int | None) -> list[Record]:
    """Keep at most `limit` records, evenly spaced over the deterministic order.

    Records are sorted by split and then by class folder or file name, so the
    first `limit` records would often all share one split and class. Even
    spacing keeps every split and class in about its proportion, and every
    stage that takes the same `--limit` selects the same records.

    Args:
        records: records in scan order.
        limit: the maximum count, or None for all records.

    Returns:
        The kept records, in scan order.
    """
    if limit is None or limit >= len(records):
        return list(records)
    return [records[(index * len(records)) // limit] for index in range(limit)]
