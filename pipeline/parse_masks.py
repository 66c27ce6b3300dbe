"""`slfer parse-masks`: give every image of a dataset an 8-part mask and report each one.

The run takes the records `i % num_shards == shard_index` of the scan and
skips those whose mask file already exists (unless overwrite). DataLoader
worker processes decode and prepare the rest while the main process parses
batches. Each parsed image gets a mask PNG, and each record a JSONL report line.

Exit status: 0 when the run finished, even if some images failed, because
failures are `failed` lines in the report and counted in the summary. 1 when
the run could not start: bad options, an unreadable dataset, missing weights,
or a parser that differs from the one recorded in OUT/parser.json.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.datasets import DatasetError, Record, scan_dataset, subset_evenly
from pipeline.devices import DeviceError, resolve_device
from pipeline.images import ImageDecodeError, decode_image
from pipeline.mask_io import mask_path, raw_mask_path, write_mask
from pipeline.parsers import FaceNotFoundError, FaceParser, ParserSetupError, create_parser
from pipeline.parsers.class_map import ClassMapError, load_class_map
from pipeline.parts import part_pixel_counts
from pipeline.text import count_noun

logger = logging.getLogger(__name__)

PARSER_FILE = "parser.json"
REPORTS_FOLDER = "reports"
# Settings in parser.json that must match on a rerun into the same folder.
AGREEMENT_KEYS = ("parser", "weights_sha256", "settings")
# Failures logged one by one; the rest are only counted (all are in the report).
MAX_LOGGED_FAILURES = 10


class ParseMasksError(RuntimeError):
    """A usage or set-up error that stops the run before any image is parsed."""


@dataclass
class RunCounts:
    done: int = 0
    skipped: int = 0
    failed: int = 0


def parse_masks(root: Path, dataset_format: str, *, label_order: str | None, skip_unknown: bool, out_dir: Path,
                parser_name: str, weights: Path | None, device: str, batch_size: int | None, workers: int | None,
                class_map: Path | None, face_box: str, num_shards: int, shard_index: int, overwrite: bool,
                limit: int | None, save_raw: bool) -> int:
    """Parse the images of one shard of a dataset into masks under `out_dir`.

    `limit` keeps that many records evenly spaced over the dataset's order, so
    that every split and class is represented, before the shard is taken and
    finished images are skipped. A rerun, and build-shards, given the same
    limit select the same images. `batch_size` and `workers` None take the
    parser's defaults, which depend on the device.

    Returns:
        The exit status: 0 when the run finished, 1 on a usage or set-up error.
    """
    try:
        check_options(parser_name, class_map, save_raw, num_shards, shard_index)
        scan = scan_dataset(root, dataset_format, label_order=label_order, skip_unknown=skip_unknown)
        if not scan.records:
            raise ParseMasksError(f"no labelled images found in {root} (--format {dataset_format})")
        records = select_shard(subset_evenly(scan.records, limit), num_shards, shard_index)
        parser = build_parser(parser_name, weights=weights, device=device, class_map=class_map,
                              face_box=face_box, save_raw=save_raw)
        record_parser(out_dir, parser, overwrite)
    except (ParseMasksError, DatasetError, DeviceError, ParserSetupError, ClassMapError) as error:
        logger.error("%s", error)
        return 1

    if scan.missing:
        logger.warning("missing: %s named by the label file, for example %s",
                       count_noun(len(scan.missing), "image"), scan.missing[0])
    batch_size = batch_size or parser.default_batch_size
    workers = parser.default_workers if workers is None else workers
    counts, report = run_shard(scan.image_root, records, out_dir, parser, overwrite=overwrite,
                               batch_size=batch_size, workers=workers, shard=(shard_index, num_shards))
    logger.info("parse-masks shard %d of %d: %d done, %d skipped as already done, %d failed; report %s",
                shard_index, num_shards, counts.done, counts.skipped, counts.failed, report)
    return 0


def check_options(parser_name: str, class_map: Path | None, save_raw: bool, num_shards: int, shard_index: int) -> None:
    """Reject option combinations that cannot work, before any slow set-up."""
    if not 0 <= shard_index < num_shards:
        raise ParseMasksError(
            f"--shard-index {shard_index} is out of range for --num-shards {num_shards}; "
            f"use 0 to {num_shards - 1}"
        )
    if parser_name != "bisenet" and class_map is not None:
        raise ParseMasksError(f"--class-map applies only to --parser bisenet, not {parser_name}; remove it")
    if parser_name != "bisenet" and save_raw:
        raise ParseMasksError(f"--save-raw applies only to --parser bisenet, not {parser_name}; remove it")


def select_shard(records: list[Record], num_shards: int, shard_index: int) -> list[Record]:
    """Keep records i with i % num_shards == shard_index: disjoint shards that together cover all."""
    return [record for index, record in enumerate(records) if index % num_shards == shard_index]


def build_parser(parser_name: str, *, weights: Path | None, device: str, class_map: Path | None,
                 face_box: str, save_raw: bool) -> FaceParser:
    """Create the parser; BiSeNet also gets its class map and torch device."""
    if parser_name == "bisenet":
        return create_parser(parser_name, weights=weights, class_map=load_class_map(class_map),
                             device=resolve_device(device), save_raw=save_raw)
    return create_parser(parser_name, face_box=face_box)


def record_parser(out_dir: Path, parser: FaceParser, overwrite: bool) -> None:
    """Write OUT/parser.json, after checking that masks already in OUT came from the same parser.

    Raises:
        ParseMasksError: when OUT/parser.json names another parser, other
            weights or other settings, and overwrite is off.
    """
    path = out_dir / PARSER_FILE
    metadata = json.loads(json.dumps(parser.metadata()))
    if path.is_file() and not overwrite:
        previous = _read_parser_file(path)
        for key in AGREEMENT_KEYS:
            if previous.get(key) != metadata[key]:
                raise ParseMasksError(
                    f"{out_dir} contains masks made with {key} {json.dumps(previous.get(key))}, but this run uses "
                    f"{json.dumps(metadata[key])}; use another --out, or pass --overwrite to parse again"
                )
    write_json_atomic(path, metadata)


def _read_parser_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ParseMasksError(
            f"{path} is not readable JSON ({error}); delete it, or pass --overwrite to parse again"
        ) from None


def write_json_atomic(path: Path, document: dict) -> None:
    """Write `document` to a temporary file beside `path`, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def run_shard(image_root: Path, records: list[Record], out_dir: Path, parser: FaceParser, *, overwrite: bool,
              batch_size: int, workers: int, shard: tuple[int, int]) -> tuple[RunCounts, Path]:
    """Parse the records that need it, write their masks, and write the JSONL report.

    Returns:
        The counts of done, skipped and failed records, and the report path.
    """
    counts = RunCounts()
    report_path = new_report_path(out_dir, *shard)
    with open(report_path, "x", encoding="utf-8") as report:
        pending = []
        for record in records:
            if not overwrite and mask_path(out_dir, record.path).is_file():
                write_report_line(report, record, parser, "skipped")
                counts.skipped += 1
            else:
                pending.append(record)

        with tqdm(total=len(pending), unit="image", desc="parse-masks", disable=None) as progress:
            for record, result, error in parse_records(image_root, pending, parser, batch_size, workers):
                if error is None:
                    save_masks(out_dir, record, result)
                    write_report_line(report, record, parser, "done", pixel_counts=part_pixel_counts(result.parts))
                    counts.done += 1
                else:
                    if counts.failed < MAX_LOGGED_FAILURES:
                        logger.warning("failed: %s: %s", record.path, error)
                    write_report_line(report, record, parser, "failed", error=error)
                    counts.failed += 1
                progress.update()
    return counts, report_path


def new_report_path(out_dir: Path, shard_index: int, num_shards: int) -> Path:
    """OUT/reports/<UTC time>-<I>-of-<N>.jsonl, with microseconds so that runs never share a file."""
    folder = out_dir / REPORTS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return folder / f"{stamp}-{shard_index}-of-{num_shards}.jsonl"


def write_report_line(report: TextIO, record: Record, parser: FaceParser, status: str, *,
                      pixel_counts: np.ndarray | None = None, error: str | None = None) -> None:
    """Append one record's outcome to the report and flush it, so a killed run keeps its lines."""
    line = {
        "path": record.path,
        "split": record.split,
        "label": record.label,
        "status": status,
        "pixel_counts": pixel_counts.tolist() if pixel_counts is not None else None,
        "parser": parser.parser_id,
        "weights_sha256": parser.weights_sha256,
        "error": error,
    }
    report.write(json.dumps(line) + "\n")
    report.flush()


def save_masks(out_dir: Path, record: Record, result) -> None:
    """Write the 8-part mask, and the raw one when the parser returned it."""
    if result.raw is not None:
        write_mask(raw_mask_path(out_dir, record.path), result.raw)
    # The 8-part mask is written last: its presence marks the record as done.
    write_mask(mask_path(out_dir, record.path), result.parts)


@dataclass
class PreparedImage:
    """One record after the worker step: the prepared input and source size, or the error."""

    index: int
    size: tuple[int, int] | None
    prepared: Any
    error: str | None


class PreparedImages:
    """Map-style dataset run by DataLoader workers: decode each image and apply the parser's `prepare`."""

    def __init__(self, paths: list[Path], prepare):
        self.paths = paths
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> PreparedImage:
        try:
            image = decode_image(self.paths[index])
            return PreparedImage(index, image.shape[:2], self.prepare(image), None)
        except (ImageDecodeError, FaceNotFoundError) as error:
            return PreparedImage(index, None, None, str(error))
        except cv2.error as error:
            # OpenCV raises cv2.error on inputs it cannot resize or draw, such as
            # degenerate sizes; that fails this image, not the run.
            return PreparedImage(index, None, None, f"OpenCV failed on {self.paths[index]}: {error}")


def _keep_batch(items: list[PreparedImage]) -> list[PreparedImage]:
    return items


def parse_records(image_root: Path, records: list[Record], parser: FaceParser, batch_size: int,
                  workers: int) -> Iterator[tuple[Record, Any, str | None]]:
    """Yield (record, ParsedMask or None, error or None) for each record, in order."""
    if not records:
        return
    from torch.utils.data import DataLoader

    # --workers is the user's choice; torch's advice to use fewer than the CPU count is noise here.
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    dataset = PreparedImages([image_root / record.path for record in records], parser.prepare)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_keep_batch)
    # OpenCV's thread pool does not survive fork: a forked worker that touches it
    # hangs when this process used it before. With one thread there is no pool,
    # and each worker is a process of its own anyway.
    opencv_threads = cv2.getNumThreads()
    if workers > 0:
        cv2.setNumThreads(1)
    try:
        for batch in loader:
            ready = [item for item in batch if item.error is None]
            results = parser.parse_batch([item.prepared for item in ready], [item.size for item in ready])
            parsed = {item.index: result for item, result in zip(ready, results)}
            for item in batch:
                yield records[item.index], parsed.get(item.index), item.error
    finally:
        cv2.setNumThreads(opencv_threads)
