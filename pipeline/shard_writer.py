"""`slfer build-shards`: pack images, masks, labels and top-n part vectors into HDF5 shards.

A build decodes every image that has a mask, resizes image and mask to
`size` x `size`, counts the pixels of each part on the stored mask and derives
the top-n part vector from those counts. Samples go into one HDF5 file per
`shard_size` samples of a split. Each shard is written under a temporary name
and renamed when closed, and its sha256 is recorded in `progress.json` so that
a rerun after a crash reuses it. `manifest.json` is written last and marks
the folder as finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from pipeline import __version__
from pipeline.datasets import DatasetError, scan_dataset, subset_evenly
from pipeline.images import ImageDecodeError, decode_image
from pipeline.labels import CLASS_NAMES, NUM_PARTS, PART_NAMES, UnknownLabelError
from pipeline.mask_io import mask_path, read_mask
from pipeline.parts import part_pixel_counts, top_n_parts
from pipeline.text import count_noun

_logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = "progress.json"
SHARD_NAME = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})\.h5$")
# Image storage codecs: `raw` uint8 pixels with no compression, `gzip` the
# same pixels deflated by HDF5, `jpeg` JPEG bytes. Masks and the per-sample
# arrays are deflated with every codec.
CODECS = ("raw", "gzip", "jpeg")
JPEG_QUALITY = 95

# gzip level 1 inflates as fast as higher levels and compresses masks nearly
# as well. lzf is left out because readers outside h5py lack it.
COMPRESSION = "gzip"
COMPRESSION_LEVEL = 1

# Samples per task sent to a worker, and tasks in flight per worker. Together
# they bound the decoded samples held in memory, whatever the dataset size.
TASK_SAMPLES = 16
TASKS_IN_FLIGHT_PER_WORKER = 2


class ShardBuildError(Exception):
    """A build-shards input or output folder that cannot be used as given."""


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its file name, split and the records it packs, in order."""

    name: str
    split: str
    records: tuple

    def samples_sha256(self, identity: dict) -> str:
        """Fingerprint of everything that determines this shard's bytes.

        NOTE: mask files are not hashed. A mask rewritten by parse-masks with
        the same parser.json is assumed to be unchanged.
        """
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
        for record in self.records:
            digest.update(f"\n{record.path}\t{record.label}".encode())
        return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """Compute the sha256 of a file, reading it in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` as JSON to a temporary file beside `path`, then rename it over `path`."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


class ShardFolderError(ValueError):
    """A shard folder that is missing, unfinished or written by an unsupported schema."""


def load_manifest(shards_dir: str | os.PathLike) -> dict:
    """Read the manifest of a finished build-shards folder.

    Raises:
        ShardFolderError: when the folder or its manifest is missing, the build
            did not finish, or the schema version is not supported.
    """
    shards_dir = Path(shards_dir)
    manifest_path = shards_dir / MANIFEST_NAME
    if not shards_dir.is_dir():
        raise ShardFolderError(f"shard folder {shards_dir} not found; pass the --out folder of build-shards")
    if not manifest_path.is_file():
        unfinished = (shards_dir / PROGRESS_NAME).is_file() or any(
            SHARD_NAME.match(path.name) or path.name.endswith(".h5.tmp") for path in shards_dir.iterdir())
        if unfinished:
            raise ShardFolderError(f"{shards_dir} has no {MANIFEST_NAME}, so build-shards did not finish there; "
                                   f"rerun the same build-shards command to complete it")
        raise ShardFolderError(f"{shards_dir} has no {MANIFEST_NAME} and no shards; "
                               f"pass the --out folder of build-shards")

    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ShardFolderError(f"{manifest_path} has schema version {manifest.get('schema_version')!r}, "
                               f"but this slfer reads version {SCHEMA_VERSION}; rebuild the shards")
    return manifest


# ---------------------------------------------------------------- sample preparation

def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 image to size x size, ignoring its aspect ratio.

    Shrinking uses area interpolation, which averages source pixels and does
    not alias. Enlarging (48-pixel FER2013 faces to 256) uses bilinear
    interpolation, because bicubic overshoots at the sharp edges of such
    small faces and OpenCV documents INTER_AREA as close to nearest-neighbour
    when enlarging.
    """
    height, width = image.shape[:2]
    shrinking = height >= size and width >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a mask of part indices to size x size with nearest-neighbour sampling.

    INTER_NEAREST_EXACT samples at pixel centres like the image interpolations
    do, while cv2.INTER_NEAREST is shifted by up to half a source pixel.
    """
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


def encode_jpeg(image: np.ndarray) -> np.ndarray:
    """Encode an RGB image as JPEG bytes, returned as a 1-D uint8 array."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("OpenCV failed to encode the image as JPEG")
    return encoded.reshape(-1)


def decode_jpeg(data: np.ndarray) -> np.ndarray:
    """Decode JPEG bytes stored by `encode_jpeg` back to an HxWx3 RGB image."""
    image = cv2.imdecode(np.asarray(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("stored JPEG bytes could not be decoded")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_worker_settings: dict = {}


def init_worker(size: int, top_n: int, codec: str) -> None:
    """Store the build settings in a worker process and keep OpenCV to one thread there."""
    cv2.setNumThreads(1)
    _worker_settings.update(size=size, top_n=top_n, codec=codec)


def prepare_sample(image_file: str, mask_file: str) -> dict:
    """Decode, resize and encode one image and its mask, and derive its part vector.

    Returns:
        A dict with `image`, `mask`, `pixel_counts` and `parts`, or with only
        `error` (a sentence) when the sample cannot be packed.
    """
    size = _worker_settings["size"]
    try:
        image = decode_image(Path(image_file))
        mask = read_mask(Path(mask_file))
    except (ImageDecodeError, OSError, ValueError) as error:
        return {"error": str(error)}
    if mask.shape != image.shape[:2]:
        return {"error": f"mask {mask.shape[1]}x{mask.shape[0]} does not match image "
                         f"{image.shape[1]}x{image.shape[0]}; parse the image again"}

    image = resize_image(image, size)
    mask = resize_mask(mask, size)
    try:
        counts = part_pixel_counts(mask)
    except ValueError as error:
        return {"error": str(error)}
    return {
        "image": encode_jpeg(image) if _worker_settings["codec"] == "jpeg" else image,
        "mask": mask,
        "pixel_counts": counts,
        "parts": top_n_parts(counts, _worker_settings["top_n"]),
    }


def prepare_task(task: list[tuple[str, str]]) -> list[dict]:
    """Prepare a list of (image file, mask file) pairs in one worker call."""
    return [prepare_sample(image_file, mask_file) for image_file, mask_file in task]


def iter_prepared(pool, workers: int, pairs: Iterable[tuple[str, str]]) -> Iterator[dict]:
    """Yield prepared samples in input order, with a bounded number of tasks in flight.

    Args:
        pool: a multiprocessing pool whose workers ran `init_worker`, or None
            to prepare samples in this process.
        workers: the number of processes in `pool`.
        pairs: (image file, mask file) pairs.
    """
    if pool is None:
        for image_file, mask_file in pairs:
            yield prepare_sample(image_file, mask_file)
        return

    max_in_flight = TASKS_IN_FLIGHT_PER_WORKER * workers
    pending = deque()
    task = []
    for pair in pairs:
        task.append(pair)
        if len(task) < TASK_SAMPLES:
            continue
        pending.append(pool.apply_async(prepare_task, (task,)))
        task = []
        if len(pending) >= max_in_flight:
            yield from pending.popleft().get()
    if task:
        pending.append(pool.apply_async(prepare_task, (task,)))
    while pending:
        yield from pending.popleft().get()


# ---------------------------------------------------------------- shard files

def create_datasets(file: h5py.File, count: int, size: int, codec: str) -> dict:
    """Create the datasets of a shard for `count` samples; they shrink later if samples fail.

    Images and masks are stored one sample per chunk, so a reader decompresses
    only the sample it requests. The small per-sample arrays are stored in one
    chunk per shard because readers load them whole.
    """
    rows = max(count, 1)
    checked = {"compression": COMPRESSION, "compression_opts": COMPRESSION_LEVEL, "fletcher32": True}
    image_filters = checked if codec == "gzip" else {"fletcher32": True}
    datasets = {}
    if codec == "jpeg":
        # HDF5 rejects filters on variable-length data, so JPEG bytes carry no
        # fletcher32 checksum. `slfer verify` still catches changes through the
        # shard's sha256 and by decoding every image.
        datasets["images"] = file.create_dataset(
            "images", shape=(count,), maxshape=(None,), dtype=h5py.vlen_dtype(np.uint8), chunks=(1,))
    else:
        datasets["images"] = file.create_dataset(
            "images", shape=(count, size, size, 3), maxshape=(None, size, size, 3), dtype=np.uint8,
            chunks=(1, size, size, 3), **image_filters)
    datasets["masks"] = file.create_dataset(
        "masks", shape=(count, size, size), maxshape=(None, size, size), dtype=np.uint8,
        chunks=(1, size, size), **checked)
    datasets["labels"] = file.create_dataset(
        "labels", shape=(count,), maxshape=(None,), dtype=np.int64, chunks=(rows,), **checked)
    datasets["parts"] = file.create_dataset(
        "parts", shape=(count, NUM_PARTS), maxshape=(None, NUM_PARTS), dtype=np.uint8,
        chunks=(rows, NUM_PARTS), **checked)
    datasets["pixel_counts"] = file.create_dataset(
        "pixel_counts", shape=(count, NUM_PARTS), maxshape=(None, NUM_PARTS), dtype=np.int64,
        chunks=(rows, NUM_PARTS), **checked)
    datasets["paths"] = file.create_dataset(
        "paths", shape=(count,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"), chunks=(rows,))
    return datasets


def shard_attributes(settings: dict, parser: dict) -> dict:
    """Attributes stored on the root group of every shard."""
    return {
        "schema_version": SCHEMA_VERSION,
        "class_names": list(CLASS_NAMES),
        "part_names": list(PART_NAMES),
        "top_n": settings["top_n"],
        "size": settings["size"],
        "codec": settings["codec"],
        "parser": str(parser.get("parser", "")),
        "weights_sha256": str(parser.get("weights_sha256") or ""),
        "tool_version": __version__,
    }


def write_shard(path: Path, plan: ShardPlan, samples: Iterator[dict], attributes: dict,
                progress: tqdm) -> tuple[int, list[dict]]:
    """Write the samples of one shard to `path` through a temporary file.

    Returns:
        The number of samples written and the skipped records, each a dict
        with `path`, `split` and `reason`.
    """
    temporary = path.with_name(f"{path.name}.tmp")
    skipped = []
    count = 0
    with h5py.File(temporary, "w") as file:
        file.attrs.update(attributes)
        datasets = create_datasets(file, len(plan.records), attributes["size"], attributes["codec"])
        for record in plan.records:
            sample = next(samples)
            progress.update(1)
            if "error" in sample:
                skipped.append({"path": record.path, "split": record.split, "reason": sample["error"]})
                continue
            datasets["images"][count] = sample["image"]
            datasets["masks"][count] = sample["mask"]
            datasets["labels"][count] = record.label
            datasets["parts"][count] = sample["parts"]
            datasets["pixel_counts"][count] = sample["pixel_counts"]
            datasets["paths"][count] = record.path
            count += 1
        if count < len(plan.records):
            for dataset in datasets.values():
                dataset.resize(count, axis=0)
    os.replace(temporary, path)
    return count, skipped


# ---------------------------------------------------------------- planning

def read_parser_info(masks_dir: Path) -> dict:
    """Read `parser.json` written by parse-masks."""
    path = masks_dir / "parser.json"
    if not path.is_file():
        raise ShardBuildError(f"{path} not found: {masks_dir} is not a finished parse-masks output; "
                              f"run `slfer parse-masks ... --out {masks_dir}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def read_mask_reports(masks_dir: Path) -> dict[str, dict]:
    """Map each record path to its latest parse-masks report line (reports sort by UTC time)."""
    latest = {}
    for report in sorted((masks_dir / "reports").glob("*.jsonl")):
        with open(report, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    entry = json.loads(line)
                    latest[entry["path"]] = entry
    return latest


def skip_reason(report: dict | None) -> str:
    """Say why an image without a mask file is not packed."""
    if report is None:
        return "mask missing: parse-masks has not handled this image"
    status = report.get("status", "unknown")
    error = report.get("error") or "no error recorded"
    if status == "failed":
        return f"mask failed: {error}"
    return f"mask missing (parse-masks status {status}: {error})"


def select_records(records: list, masks_dir: Path, limit: int | None) -> tuple[dict[str, list], list[dict]]:
    """Split records into those with a mask, grouped by split, and skipped ones with their reason.

    `limit` keeps the same evenly spaced records as `parse-masks --limit`, so the
    two stages given one limit agree on which images they handle.
    """
    reports = read_mask_reports(masks_dir)
    packable: dict[str, list] = {}
    skipped = []
    for record in subset_evenly(records, limit):
        split_records = packable.setdefault(record.split, [])
        if mask_path(masks_dir, record.path).is_file():
            split_records.append(record)
        else:
            skipped.append({"path": record.path, "split": record.split,
                            "reason": skip_reason(reports.get(record.path))})
    return {split: found for split, found in packable.items() if found}, skipped


def plan_shards(packable: dict[str, list], shard_size: int) -> list[ShardPlan]:
    """Cut each split's records into consecutive shards of `shard_size` records."""
    plans = []
    for split, records in packable.items():
        for index, start in enumerate(range(0, len(records), shard_size)):
            plans.append(ShardPlan(f"{split}-{index:05d}.h5", split, tuple(records[start:start + shard_size])))
    return plans


# ---------------------------------------------------------------- resume

def read_previous_build(out_dir: Path) -> dict | None:
    """Read the manifest of a finished build in `out_dir`, else the progress file of an unfinished one."""
    for name in (MANIFEST_NAME, PROGRESS_NAME):
        path = out_dir / name
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def clear_out_dir(out_dir: Path) -> None:
    """Delete the shards, temporary files, progress file and manifest of any earlier build."""
    for path in out_dir.iterdir():
        temporary = path.name.endswith(".h5.tmp") or (path.name.startswith(".") and ".json.tmp-" in path.name)
        if SHARD_NAME.match(path.name) or temporary or path.name in (MANIFEST_NAME, PROGRESS_NAME):
            path.unlink()


def check_out_dir(out_dir: Path, identity: dict, overwrite: bool) -> dict:
    """Prepare `out_dir` and return what an earlier run of the same build finished.

    Returns:
        `shards`, the earlier run's finished shard entries by file name, and
        `skipped`, the records it skipped.

    Raises:
        ShardBuildError: when `out_dir` contains shards of a different build
            and `overwrite` is off.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    nothing = {"shards": {}, "skipped": []}
    if overwrite:
        clear_out_dir(out_dir)
        return nothing
    for stale in [*out_dir.glob("*.h5.tmp"), *out_dir.glob(".*.json.tmp-*")]:
        _logger.info("removing %s left by an interrupted build", stale.name)
        stale.unlink()

    previous = read_previous_build(out_dir)
    existing = sorted(path.name for path in out_dir.iterdir() if SHARD_NAME.match(path.name))
    if previous is None:
        if existing:
            raise ShardBuildError(
                f"{out_dir} contains shards ({', '.join(existing[:3])}) but no {MANIFEST_NAME} or {PROGRESS_NAME}, "
                f"so they may belong to another build; choose another --out or pass --overwrite")
        return nothing
    if previous.get("build") != identity:
        changes = describe_changes(previous.get("build", {}), identity)
        summary = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise ShardBuildError(
            f"{out_dir} contains shards of another build ({summary}); "
            f"choose another --out or pass --overwrite to replace them")
    return {"shards": {shard["file"]: shard for shard in previous.get("shards", [])},
            "skipped": previous.get("skipped", [])}


def describe_changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """List the settings that differ between two build identities, as `name before -> after`."""
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += describe_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key} {old!r} -> {new!r}")
    return changes


def is_reusable(out_dir: Path, plan: ShardPlan, samples_sha256: str, finished: dict[str, dict]) -> bool:
    """Tell whether the shard file of an earlier run contains exactly the planned samples, unchanged."""
    entry = finished.get(plan.name)
    path = out_dir / plan.name
    if entry is None or entry.get("samples_sha256") != samples_sha256 or not path.is_file():
        return False
    return file_sha256(path) == entry["sha256"]


# ---------------------------------------------------------------- manifest

def split_histograms(out_dir: Path, shards: list[dict]) -> dict[str, dict]:
    """Count samples per class and per marked part in each split, reading the shards back."""
    splits: dict[str, dict] = {}
    for shard in shards:
        summary = splits.setdefault(shard["split"], {
            "count": 0,
            "labels": dict.fromkeys(CLASS_NAMES, 0),
            "parts": dict.fromkeys(PART_NAMES, 0),
        })
        with h5py.File(out_dir / shard["file"], "r") as file:
            labels = file["labels"][:]
            parts = file["parts"][:]
        summary["count"] += int(labels.size)
        for index, count in enumerate(np.bincount(labels, minlength=len(CLASS_NAMES))):
            summary["labels"][CLASS_NAMES[index]] += int(count)
        for index, count in enumerate(parts.sum(axis=0, dtype=np.int64) if parts.size else np.zeros(NUM_PARTS)):
            summary["parts"][PART_NAMES[index]] += int(count)
    return splits


def build_manifest(out_dir: Path, identity: dict, parser: dict, shards: list[dict], skipped: list[dict]) -> dict:
    """Assemble the manifest of a finished build. It contains no timestamps, so reruns reproduce it."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "class_names": list(CLASS_NAMES),
        "part_names": list(PART_NAMES),
        "build": identity,
        "parser": parser,
        "shards": shards,
        "splits": split_histograms(out_dir, shards),
        "skipped": skipped,
    }


# ---------------------------------------------------------------- the command

def make_pool(workers: int, settings: dict):
    """Start `workers` processes that prepare samples, or return None to prepare them in this process."""
    if workers == 0:
        init_worker(settings["size"], settings["top_n"], settings["codec"])
        return None
    return multiprocessing.get_context().Pool(
        workers, initializer=init_worker, initargs=(settings["size"], settings["top_n"], settings["codec"]))


def write_shards(plans: list[ShardPlan], image_root: Path, masks_dir: Path, out_dir: Path, identity: dict,
                 parser: dict, previous: dict, workers: int) -> tuple[list[dict], list[dict]]:
    """Write every planned shard that cannot be reused, recording each finished one in the progress file.

    Args:
        previous: `shards` (finished shards by file name) and `skipped` (the
            records they skipped) of an earlier run of the same build.

    Returns:
        The manifest entries of all shards and the records skipped while
        preparing samples, both in plan order.
    """
    settings = identity["settings"]
    attributes = shard_attributes(settings, parser)
    shards: list[dict | None] = [None] * len(plans)
    skipped: list[list[dict]] = [[] for _ in plans]
    for position, plan in enumerate(plans):
        if is_reusable(out_dir, plan, plan.samples_sha256(identity), previous["shards"]):
            shards[position] = previous["shards"][plan.name]
            planned = {(record.split, record.path) for record in plan.records}
            skipped[position] = [entry for entry in previous["skipped"] if (entry["split"], entry["path"]) in planned]
    to_write = [position for position, shard in enumerate(shards) if shard is None]
    if len(to_write) < len(plans):
        _logger.info("reusing %s of an earlier run", count_noun(len(plans) - len(to_write), "finished shard"))

    pairs = ((str(image_root / record.path), str(mask_path(masks_dir, record.path)))
             for position in to_write for record in plans[position].records)
    pool = make_pool(workers, settings) if to_write else None
    try:
        samples = iter_prepared(pool, workers, pairs)
        total = sum(len(plans[position].records) for position in to_write)
        with tqdm(total=total, unit="img", desc="build-shards", disable=None) as progress:
            for position in to_write:
                plan = plans[position]
                count, skipped[position] = write_shard(out_dir / plan.name, plan, samples, attributes, progress)
                shards[position] = {"file": plan.name, "split": plan.split, "count": count,
                                    "sha256": file_sha256(out_dir / plan.name),
                                    "samples_sha256": plan.samples_sha256(identity)}
                write_json_atomic(out_dir / PROGRESS_NAME, {
                    "build": identity,
                    "shards": [shard for shard in shards if shard is not None],
                    "skipped": [entry for entries in skipped for entry in entries],
                })
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return shards, [entry for entries in skipped for entry in entries]


def build_identity(root: Path, dataset_format: str, label_order: str | None, skip_unknown: bool,
                   masks_dir: Path, settings: dict, parser: dict) -> dict:
    """Everything that selects the samples of a build and determines its bytes."""
    return {
        "source": {
            "root": str(root.resolve()),
            "format": dataset_format,
            "label_order": label_order,
            "skip_unknown": skip_unknown,
            "masks": str(masks_dir.resolve()),
        },
        "settings": settings,
        "parser": parser,
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
    }


def build_shards(root: Path, dataset_format: str, *, label_order: str | None, skip_unknown: bool,
                 masks_dir: Path, out_dir: Path, size: int = 256, top_n: int = 4, shard_size: int = 4096,
                 codec: str = "raw", workers: int = 4, overwrite: bool = False, limit: int | None = None) -> int:
    """Build the HDF5 shards and manifest of a dataset whose masks parse-masks wrote.

    Returns:
        The exit status: 0 when the manifest was written, 1 when the inputs or
        the output folder cannot be used (the reason is logged).
    """
    try:
        return run_build(root, dataset_format, label_order, skip_unknown, Path(masks_dir), Path(out_dir),
                         {"size": size, "top_n": top_n, "shard_size": shard_size, "codec": codec,
                          "compression": f"{COMPRESSION}-{COMPRESSION_LEVEL}", "limit": limit},
                         workers, overwrite)
    except (ShardBuildError, UnknownLabelError, DatasetError) as error:
        _logger.error("%s", error)
        return 1


def run_build(root: Path, dataset_format: str, label_order: str | None, skip_unknown: bool, masks_dir: Path,
              out_dir: Path, settings: dict, workers: int, overwrite: bool) -> int:
    """Plan, write and record the shards; the steps of `build_shards`."""
    if settings["codec"] not in CODECS:
        raise ShardBuildError(f"codec {settings['codec']!r} is not one of {', '.join(CODECS)}")
    parser = read_parser_info(masks_dir)
    scan = scan_dataset(root, dataset_format, label_order=label_order, skip_unknown=skip_unknown)
    packable, skipped = select_records(scan.records, masks_dir, settings["limit"])
    skipped += [{"path": path, "split": None, "reason": "image file not found"} for path in scan.missing]
    if not packable:
        raise ShardBuildError(f"none of the {len(scan.records)} images of {root} has a mask in {masks_dir}; "
                              f"run parse-masks with the same dataset first")

    identity = build_identity(root, dataset_format, label_order, skip_unknown, masks_dir, settings, parser)
    previous = check_out_dir(out_dir, identity, overwrite)
    plans = plan_shards(packable, settings["shard_size"])
    shards, decode_skipped = write_shards(plans, scan.image_root, masks_dir, out_dir, identity, parser,
                                          previous, workers)

    planned = {plan.name for plan in plans}
    for path in sorted(out_dir.iterdir()):
        if SHARD_NAME.match(path.name) and path.name not in planned:
            _logger.info("removing %s, which this build does not plan", path.name)
            path.unlink()

    manifest = build_manifest(out_dir, identity, parser, shards, skipped + decode_skipped)
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    (out_dir / PROGRESS_NAME).unlink(missing_ok=True)
    log_summary(out_dir, manifest)
    return 0


def log_summary(out_dir: Path, manifest: dict) -> None:
    """Log the sample counts per split and the skipped images."""
    counts = ", ".join(f"{split} {summary['count']}" for split, summary in manifest["splits"].items())
    _logger.info("wrote %s to %s: %s", count_noun(len(manifest["shards"]), "shard"), out_dir, counts)
    skipped = manifest["skipped"]
    if skipped:
        _logger.warning("skipped %s (listed in %s), for example %s: %s", count_noun(len(skipped), "image"),
                        out_dir / MANIFEST_NAME, skipped[0]["path"], skipped[0]["reason"])
