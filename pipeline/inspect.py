"""`slfer inspect-dataset`: count a dataset's samples and report what cannot be used."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import click
from tqdm import tqdm

from pipeline.datasets import DatasetError, DatasetScan, scan_dataset
from pipeline.images import ImageDecodeError, decode_image
from pipeline.labels import CLASS_NAMES

logger = logging.getLogger(__name__)

# Images decoded per worker task: large enough to amortise the process
# round trip, small enough for a smooth progress bar.
CHUNK_SIZE = 256

# Problem files listed in full; the rest are counted, and logged with --verbose.
MAX_LISTED_FILES = 20


@dataclass
class ImageCheck:
    """Result of decoding every image of a scan.

    Attributes:
        unreadable: (relative path, reason) of each image that failed to decode.
        sizes: (height, width) -> number of decoded images of that size.
    """

    unreadable: list[tuple[str, str]] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)


def inspect_dataset(
    root: str | os.PathLike,
    fmt: str,
    *,
    label_order: str | Sequence[str] | None = None,
    skip_unknown: bool = False,
    check_images: bool = False,
    workers: int = 4,
) -> int:
    """Print per-split class counts, skipped labels, missing and (optionally) unreadable files.

    Args:
        root: dataset root, as for `scan_dataset`.
        fmt: dataset format: rafdb, sfew, folder or csv.
        label_order: csv only: class names for integer labels 0, 1, ...
        skip_unknown: skip and count unknown labels instead of failing.
        check_images: decode every image and list those that fail.
        workers: processes that decode images; 0 decodes in this process.

    Returns:
        The exit code: 0 when the dataset has records and no missing or
        unreadable files, else 1.
    """
    try:
        scan = scan_dataset(root, fmt, label_order=label_order, skip_unknown=skip_unknown)
    except DatasetError as error:
        logger.error("%s", error)
        return 1

    click.echo(f"{fmt} dataset, images under {scan.image_root}")
    click.echo(format_count_table(scan))
    report_skipped(scan.skipped)
    report_files("missing file", scan.missing)

    check = None
    if check_images and scan.records:
        check = check_all_images(scan, workers)
        report_sizes(check.sizes)
        report_files("unreadable file", [f"{path}: {reason}" for path, reason in check.unreadable])

    return report_verdict(scan, check)


def format_count_table(scan: DatasetScan) -> str:
    """Format a table of class counts with one column per split and a total row."""
    counts = scan.class_counts()
    if not counts:
        return "no labelled images found"

    splits = list(counts)
    width = max(len(name) for name in (*CLASS_NAMES, "total"))
    column = max(8, *(len(split) + 2 for split in splits))
    lines = ["class".ljust(width) + "".join(split.rjust(column) for split in splits)]
    for index, name in enumerate(CLASS_NAMES):
        lines.append(name.ljust(width) + "".join(str(counts[split][index]).rjust(column) for split in splits))
    lines.append("total".ljust(width) + "".join(str(sum(counts[split])).rjust(column) for split in splits))
    return "\n".join(lines)


def report_skipped(skipped: Counter) -> None:
    """Print the labels whose samples were skipped, with their counts."""
    if not skipped:
        return
    listed = ", ".join(f"{label} {count}" for label, count in sorted(skipped.items()))
    click.echo(f"skipped labels ({sum(skipped.values())} samples): {listed}")


def report_files(kind: str, lines: list[str]) -> None:
    """Print up to MAX_LISTED_FILES problem files and count the rest."""
    if not lines:
        return
    click.echo(f"{plural(len(lines), kind)}:")
    for line in lines[:MAX_LISTED_FILES]:
        click.echo(f"  {line}")
    if len(lines) > MAX_LISTED_FILES:
        click.echo(f"  ... and {len(lines) - MAX_LISTED_FILES} more (run with --verbose to log them all)")
        for line in lines[MAX_LISTED_FILES:]:
            logger.debug("%s: %s", kind, line)


def report_sizes(sizes: Counter, max_listed: int = 5) -> None:
    """Print the most common image sizes."""
    if not sizes:
        return
    listed = ", ".join(f"{width}x{height} ({count})" for (height, width), count in sizes.most_common(max_listed))
    more = f", and {len(sizes) - max_listed} other sizes" if len(sizes) > max_listed else ""
    click.echo(f"image sizes (width x height): {listed}{more}")


def report_verdict(scan: DatasetScan, check: ImageCheck | None) -> int:
    """Print whether the dataset is usable and return the exit code."""
    problems = []
    if not scan.records:
        problems.append("no labelled images")
    if scan.missing:
        problems.append(plural(len(scan.missing), "missing file"))
    if check is not None and check.unreadable:
        problems.append(plural(len(check.unreadable), "unreadable file"))

    if problems:
        click.echo(f"not usable: {', '.join(problems)}")
        return 1
    checked = ", all images decoded" if check is not None else ""
    click.echo(f"usable: {plural(len(scan.records), 'image')}{checked}")
    return 0


def plural(count: int, noun: str) -> str:
    """Return "1 image" or "N images"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def check_all_images(scan: DatasetScan, workers: int) -> ImageCheck:
    """Decode every image of `scan`, in `workers` processes, with a progress bar."""
    paths = [record.path for record in scan.records]
    chunks = [paths[start:start + CHUNK_SIZE] for start in range(0, len(paths), CHUNK_SIZE)]
    check = ImageCheck()

    with tqdm(total=len(paths), desc="decoding images", unit="image", disable=None) as progress:
        for chunk_check, count in decode_chunks(scan.image_root, chunks, workers):
            check.unreadable.extend(chunk_check.unreadable)
            check.sizes.update(chunk_check.sizes)
            progress.update(count)

    check.unreadable.sort()
    return check


def decode_chunks(
    image_root: Path, chunks: list[list[str]], workers: int,
) -> Iterator[tuple[ImageCheck, int]]:
    """Yield (check result, image count) per chunk, as chunks finish."""
    if workers == 0:
        for chunk in chunks:
            yield decode_chunk(image_root, chunk), len(chunk)
        return

    with ProcessPoolExecutor(max_workers=workers) as executor:
        futures = {executor.submit(decode_chunk, image_root, chunk): len(chunk) for chunk in chunks}
        for future in as_completed(futures):
            yield future.result(), futures[future]


def decode_chunk(image_root: Path, paths: list[str]) -> ImageCheck:
    """Decode the images at `paths` (relative to `image_root`) and record failures and sizes."""
    check = ImageCheck()
    for path in paths:
        try:
            pixels = decode_image(image_root / path)
        except ImageDecodeError as error:
            check.unreadable.append((path, error.reason))
            continue
        check.sizes[pixels.shape[:2]] += 1
    return check
