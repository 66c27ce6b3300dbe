"""`slfer verify`: re-check a shard folder against its manifest and read every sample.

Checks, per shard: the sha256 recorded in the manifest, the root attributes,
the datasets with their dtypes, shapes and filters, the sample count, and
every sample. HDF5 verifies each chunk's fletcher32 checksum while reading, so
a flipped byte inside a raw image or mask chunk fails there. Each sample's
pixel counts and part vector are recomputed from its mask, and the label and
part histograms of each split from the shards.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from pipeline.labels import CLASS_NAMES, NUM_PARTS, PART_NAMES
from pipeline.parts import part_pixel_counts, top_n_parts
from pipeline.shard_writer import ShardFolderError, decode_jpeg, file_sha256, load_manifest, shard_attributes
from pipeline.text import count_noun

_logger = logging.getLogger(__name__)


def verify_shards(shards_dir: str | os.PathLike) -> int:
    """Verify every shard of a build-shards folder.

    Returns:
        0 when every check passed (a summary is logged), 1 otherwise (each
        problem is logged with the shard it concerns).
    """
    shards_dir = Path(shards_dir)
    try:
        manifest = load_manifest(shards_dir)
    except ShardFolderError as error:
        _logger.error("%s", error)
        return 1

    problems = []
    histograms = {}
    total = sum(shard["count"] for shard in manifest["shards"])
    with tqdm(total=total, unit="img", desc="verify", disable=None) as progress:
        for shard in manifest["shards"]:
            shard_problems = verify_shard(shards_dir, shard, manifest, histograms, progress)
            problems.extend(f"{shard['file']}: {problem}" for problem in shard_problems)
    if not problems:
        # Histograms of a split with a broken shard would differ anyway.
        problems.extend(compare_histograms(manifest, histograms))

    for problem in problems:
        _logger.error("%s", problem)
    if problems:
        _logger.error("%s found in %s", count_noun(len(problems), "problem"), shards_dir)
        return 1
    counts = ", ".join(f"{split} {summary['count']}" for split, summary in manifest["splits"].items())
    _logger.info("verified %s in %s: %s samples, all readable and matching the manifest",
                 count_noun(len(manifest["shards"]), "shard"), shards_dir, counts)
    return 0


def verify_shard(shards_dir: Path, shard: dict, manifest: dict, histograms: dict, progress: tqdm) -> list[str]:
    """Check one shard and add its labels and parts to `histograms`; return its problems."""
    path = shards_dir / shard["file"]
    if not path.is_file():
        progress.update(shard["count"])
        return ["file missing"]

    problems = []
    if file_sha256(path) != shard["sha256"]:
        problems.append("sha256 differs from the manifest, so the file changed after it was written")
    try:
        with h5py.File(path, "r") as file:
            problems += check_attributes(file, manifest)
            schema_problems = check_schema(file, shard["count"], manifest["build"]["settings"])
            problems += schema_problems
            if schema_problems:
                progress.update(shard["count"])
            else:
                problems += check_samples(file, shard, manifest["build"]["settings"], histograms, progress)
    except OSError as error:
        problems.append(f"cannot be opened as HDF5 ({error})")
    return problems


def check_attributes(file: h5py.File, manifest: dict) -> list[str]:
    """Compare the shard's root attributes with those the manifest's build would write."""
    expected = shard_attributes(manifest["build"]["settings"], manifest["parser"])
    expected["tool_version"] = manifest["tool_version"]
    problems = []
    for name, value in expected.items():
        if name not in file.attrs:
            problems.append(f"attribute {name} missing")
            continue
        stored = file.attrs[name]
        stored = [str(item) for item in stored] if isinstance(value, list) else stored
        if stored != value:
            problems.append(f"attribute {name} is {stored!r}, the manifest says {value!r}")
    return problems


def check_schema(file: h5py.File, count: int, settings: dict) -> list[str]:
    """Check each dataset's presence, dtype, shape and, where HDF5 allows, fletcher32 filter."""
    size = settings["size"]
    image_shape = (count,) if settings["codec"] == "jpeg" else (count, size, size, 3)
    expected = {
        "images": (image_shape, np.uint8),
        "masks": ((count, size, size), np.uint8),
        "labels": ((count,), np.int64),
        "parts": ((count, NUM_PARTS), np.uint8),
        "pixel_counts": ((count, NUM_PARTS), np.int64),
        "paths": ((count,), None),
    }
    problems = []
    for name, (shape, dtype) in expected.items():
        if name not in file:
            problems.append(f"dataset {name} missing")
            continue
        dataset = file[name]
        if dataset.shape != shape:
            problems.append(f"dataset {name} has shape {dataset.shape}, expected {shape}")
        stored_dtype = h5py.check_vlen_dtype(dataset.dtype) or dataset.dtype
        if dtype is not None and stored_dtype != dtype:
            problems.append(f"dataset {name} has dtype {stored_dtype}, expected {np.dtype(dtype)}")
        checked = name != "paths" and not (name == "images" and settings["codec"] == "jpeg")
        if checked and not dataset.fletcher32:
            problems.append(f"dataset {name} has no fletcher32 checksum")
    return problems


def check_samples(file: h5py.File, shard: dict, settings: dict, histograms: dict, progress: tqdm) -> list[str]:
    """Read every sample and check its values; stop at the first unreadable sample."""
    labels = file["labels"][:]
    parts = file["parts"][:]
    pixel_counts = file["pixel_counts"][:]
    problems = []
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        problems.append(f"labels outside 0..{len(CLASS_NAMES) - 1}: {sorted(set(labels.tolist()))}")

    for index in range(shard["count"]):
        try:
            image = file["images"][index]
            if settings["codec"] == "jpeg":
                image = decode_jpeg(image)
            mask = file["masks"][index]
        except (OSError, ValueError) as error:
            problems.append(f"sample {index} cannot be read ({error})")
            progress.update(shard["count"] - index)
            return problems
        progress.update(1)
        problems += check_sample(index, image, mask, pixel_counts[index], parts[index], settings)

    split = histograms.setdefault(shard["split"], {
        "count": 0, "labels": dict.fromkeys(CLASS_NAMES, 0), "parts": dict.fromkeys(PART_NAMES, 0)})
    split["count"] += int(labels.size)
    for label in labels[(labels >= 0) & (labels < len(CLASS_NAMES))]:
        split["labels"][CLASS_NAMES[label]] += 1
    for part, marked in enumerate(parts.sum(axis=0, dtype=np.int64)):
        split["parts"][PART_NAMES[part]] += int(marked)
    return problems


def check_sample(index: int, image: np.ndarray, mask: np.ndarray, pixel_counts: np.ndarray, parts: np.ndarray,
                 settings: dict) -> list[str]:
    """Check one sample's image shape and that its stored counts and part vector match its mask."""
    size = settings["size"]
    if image.shape != (size, size, 3):
        return [f"sample {index} image has shape {image.shape}, expected {(size, size, 3)}"]
    try:
        counts = part_pixel_counts(mask)
    except ValueError as error:
        return [f"sample {index}: {error}"]
    if not np.array_equal(counts, pixel_counts):
        return [f"sample {index} pixel counts {pixel_counts.tolist()} differ from its mask's {counts.tolist()}"]
    if not np.array_equal(top_n_parts(counts, settings["top_n"]), parts):
        return [f"sample {index} part vector {parts.tolist()} is not the top-{settings['top_n']} of its mask"]
    return []


def compare_histograms(manifest: dict, histograms: dict) -> list[str]:
    """Compare the per-split counts and histograms read from the shards with the manifest's."""
    problems = []
    for split, summary in manifest["splits"].items():
        found = histograms.get(split, {"count": 0, "labels": {}, "parts": {}})
        for key in ("count", "labels", "parts"):
            if found[key] != summary[key]:
                problems.append(f"split {split}: {key} in the shards {found[key]} differ from the manifest's "
                                f"{summary[key]}")
    return problems
