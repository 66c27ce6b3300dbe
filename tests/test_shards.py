"""build-shards and verify: the top-n rule, shard contents, resume after a kill, and corruption checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO_ROOT, run_cli
from shard_fixtures import CLASSES, build_args, make_dataset

from pipeline.images import decode_image
from pipeline.labels import CLASS_NAMES, PART_NAMES
from pipeline.mask_io import mask_path, read_mask
from pipeline.parts import part_pixel_counts, top_n_parts
from pipeline.shard_writer import decode_jpeg, resize_image, resize_mask

SIZE = 24


# ---------------------------------------------------------------- the top-n rule

def counts_of(**pixels: int) -> np.ndarray:
    """8 pixel counts from part names, zero for parts not named."""
    return np.array([pixels.get(name, 0) for name in PART_NAMES], dtype=np.int64)


def marked(vector: np.ndarray) -> list[str]:
    return [PART_NAMES[index] for index in np.flatnonzero(vector)]


def test_top_n_picks_largest_parts():
    counts = counts_of(background=10, skin=50, eye=5, ear=1, nose=8, mouth=9, neck=2, hair=30)
    assert marked(top_n_parts(counts, 4)) == ["skin", "nose", "mouth", "hair"]


def test_top_n_ties_go_to_lower_index():
    counts = counts_of(skin=9, eye=4, ear=4, nose=4, mouth=4)
    assert marked(top_n_parts(counts, 3)) == ["skin", "eye", "ear"]


def test_top_n_never_marks_background():
    counts = counts_of(background=1000, skin=3, eye=2, nose=1)
    assert top_n_parts(counts, 4)[0] == 0


def test_top_n_skips_zero_pixel_parts():
    counts = counts_of(background=100, skin=3, eye=2)
    assert marked(top_n_parts(counts, 4)) == ["skin", "eye"]


def test_top_n_of_background_only_mask():
    assert top_n_parts(counts_of(background=64), 4).sum() == 0


def test_top_n_from_hand_made_mask():
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[0:3, :] = 1      # skin 18
    mask[3, 0:3] = 2      # eye 3
    mask[3, 3:6] = 4      # nose 3, tied with eye
    mask[4, 0:2] = 5      # mouth 2
    mask[5, 0] = 7        # hair 1
    vector = top_n_parts(part_pixel_counts(mask), 3)
    assert marked(vector) == ["skin", "eye", "nose"]
    assert vector.dtype == np.uint8


def test_pixel_counts_reject_non_part_values():
    mask = np.full((2, 2), 9, dtype=np.uint8)
    with pytest.raises(ValueError, match="9"):
        part_pixel_counts(mask)


# ---------------------------------------------------------------- building shards

@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """3 classes x (4 train + 2 val) images of 40x32, with one missing and one failed mask."""
    root, masks_dir = make_dataset(tmp_path_factory.mktemp("shards"), {"train": 4, "val": 2})
    mask_path(masks_dir, "train/angry/3.png").unlink()
    mask_path(masks_dir, "val/happy/1.png").unlink()
    reports = masks_dir / "reports"
    reports.mkdir()
    (reports / "20260101T000000-0-of-1.jsonl").write_text(
        json.dumps({"path": "val/happy/1.png", "status": "failed", "error": "no face found"}) + "\n")
    return root, masks_dir


def build(dataset, out_dir: Path, *options: str) -> subprocess.CompletedProcess:
    root, masks_dir = dataset
    result = run_cli(*build_args(root, masks_dir, out_dir, "--size", str(SIZE), "--shard-size", "5", *options))
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module", params=["raw", "gzip", "jpeg"])
def built(request, dataset, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp(f"out-{request.param}")
    build(dataset, out_dir, "--codec", request.param, "--workers", "2")
    return out_dir


def read_shards(out_dir: Path, split: str) -> dict[str, list]:
    """Every dataset of a split's shards, concatenated sample by sample in manifest order."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    fields = {name: [] for name in ("images", "masks", "labels", "parts", "pixel_counts", "paths")}
    for shard in manifest["shards"]:
        if shard["split"] != split:
            continue
        with h5py.File(out_dir / shard["file"], "r") as file:
            for name in fields:
                fields[name].extend(file[name][:])
    fields["paths"] = [path.decode() for path in fields["paths"]]
    return fields


def test_shards_hold_every_sample_with_a_mask(built):
    stored = read_shards(built, "train")
    expected = [f"train/{name}/{number}.png" for name in CLASSES for number in range(4)]
    expected.remove("train/angry/3.png")
    assert stored["paths"] == expected


def test_shards_round_trip_every_field(built, dataset):
    root, masks_dir = dataset
    codec = json.loads((built / "manifest.json").read_text())["build"]["settings"]["codec"]
    stored = read_shards(built, "val")
    assert stored["paths"], "no val samples stored"
    for position, path in enumerate(stored["paths"]):
        image = resize_image(decode_image(root / path), SIZE)
        mask = resize_mask(read_mask(mask_path(masks_dir, path)), SIZE)
        stored_image = decode_jpeg(stored["images"][position]) if codec == "jpeg" else stored["images"][position]
        counts = part_pixel_counts(mask)
        if codec == "jpeg":
            assert np.abs(stored_image.astype(int) - image).mean() < 4, path
        else:
            assert np.array_equal(stored_image, image), path
        assert np.array_equal(stored["masks"][position], mask), path
        assert stored["labels"][position] == CLASS_NAMES.index(path.split("/")[1]), path
        assert np.array_equal(stored["pixel_counts"][position], counts), path
        assert np.array_equal(stored["parts"][position], top_n_parts(counts, 4)), path


def test_shard_attributes(built):
    with h5py.File(built / "train-00000.h5", "r") as file:
        attributes = dict(file.attrs)
    assert attributes["schema_version"] == 1
    assert list(attributes["class_names"]) == list(CLASS_NAMES)
    assert list(attributes["part_names"]) == list(PART_NAMES)
    assert attributes["top_n"] == 4
    assert attributes["size"] == SIZE
    assert attributes["parser"] == "drawn-by-test"
    assert "tool_version" in attributes


def test_one_sample_per_chunk(built):
    with h5py.File(built / "train-00000.h5", "r") as file:
        assert file["images"].chunks[0] == 1
        assert file["masks"].chunks == (1, SIZE, SIZE)
        assert file["masks"].fletcher32


def test_manifest_counts_and_histograms(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert [shard["count"] for shard in manifest["shards"]] == [5, 5, 1, 5]
    assert manifest["splits"]["val"]["count"] == 5
    assert manifest["splits"]["train"]["labels"]["angry"] == 3
    assert manifest["splits"]["train"]["labels"]["happy"] == 4
    assert manifest["splits"]["train"]["parts"]["background"] == 0


def test_manifest_lists_skipped_images(built):
    skipped = {entry["path"]: entry["reason"] for entry in json.loads((built / "manifest.json").read_text())["skipped"]}
    assert skipped["val/happy/1.png"] == "mask failed: no face found"
    assert skipped["train/angry/3.png"].startswith("mask missing")


def test_shards_are_reproducible(dataset, tmp_path):
    build(dataset, tmp_path / "a", "--workers", "0")
    build(dataset, tmp_path / "b", "--workers", "2")
    assert (tmp_path / "a" / "manifest.json").read_text() == (tmp_path / "b" / "manifest.json").read_text()


def test_rerun_reuses_finished_shards(dataset, tmp_path):
    build(dataset, tmp_path)
    written = (tmp_path / "train-00000.h5").stat().st_mtime_ns
    result = build(dataset, tmp_path)
    assert "reusing 4 finished shards" in result.stderr
    assert (tmp_path / "train-00000.h5").stat().st_mtime_ns == written


def test_other_build_is_rejected(dataset, tmp_path):
    build(dataset, tmp_path)
    root, masks_dir = dataset
    result = run_cli(*build_args(root, masks_dir, tmp_path, "--size", "32"))
    assert result.returncode == 1
    assert "another build" in result.stderr
    assert "size" in result.stderr


def test_overwrite_replaces_other_build(dataset, tmp_path):
    build(dataset, tmp_path)
    build(dataset, tmp_path, "--top-n", "2", "--overwrite")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["build"]["settings"]["top_n"] == 2


def test_missing_parser_json_is_an_error(dataset, tmp_path):
    root, _ = dataset
    (tmp_path / "parsed").mkdir()
    result = run_cli(*build_args(root, tmp_path / "parsed", tmp_path / "out"))
    assert result.returncode == 1
    assert "parser.json not found" in result.stderr


def test_limit_spreads_over_splits(dataset, tmp_path):
    build(dataset, tmp_path, "--limit", "6")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    counts = {split: summary["count"] for split, summary in manifest["splits"].items()}
    skipped_for_masks = [entry for entry in manifest["skipped"] if entry["reason"].startswith("mask")]
    assert set(counts) == {"train", "val"}
    assert sum(counts.values()) + len(skipped_for_masks) == 6


# ---------------------------------------------------------------- resume after a kill

@pytest.mark.slow
def test_rerun_after_kill_matches_clean_run(tmp_path):
    root, masks_dir = make_dataset(tmp_path, {"train": 40}, shape=(48, 48))
    settings = ("--size", "128", "--shard-size", "10")
    args = build_args(root, masks_dir, tmp_path / "killed", *settings, "--workers", "0")
    command = [str(Path(sys.executable).parent / "slfer"), *args]
    if not Path(command[0]).exists():
        command = [sys.executable, str(REPO_ROOT / "cli.py"), *args]

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "killed" / "progress.json"
    deadline = time.monotonic() + 120
    while not progress.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists(), "the build finished before it was killed"

    rerun = run_cli(*args)
    clean = run_cli(*build_args(root, masks_dir, tmp_path / "clean", *settings, "--workers", "2"))
    assert rerun.returncode == 0, rerun.stderr
    assert clean.returncode == 0, clean.stderr
    assert "reusing" in rerun.stderr
    killed_manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    clean_manifest = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    assert killed_manifest == clean_manifest
    assert sorted(os.listdir(tmp_path / "killed")) == sorted(os.listdir(tmp_path / "clean"))


# ---------------------------------------------------------------- verify

def flip_byte_in_chunk(shard: Path, dataset_name: str, sample: int) -> None:
    """Invert one byte in the middle of a sample's stored chunk."""
    with h5py.File(shard, "r") as file:
        chunk = file[dataset_name].id.get_chunk_info(sample)
    with open(shard, "r+b") as raw:
        raw.seek(chunk.byte_offset + chunk.size // 2)
        value = raw.read(1)[0]
        raw.seek(-1, os.SEEK_CUR)
        raw.write(bytes([value ^ 0xFF]))


@pytest.fixture
def copied(built, tmp_path) -> Path:
    out_dir = tmp_path / "copy"
    shutil.copytree(built, out_dir)
    return out_dir


def test_verify_passes_intact_shards(built):
    result = run_cli("verify", built)
    assert result.returncode == 0, result.stderr
    assert "verified 4 shards" in result.stderr


def test_verify_catches_flipped_byte(copied):
    flip_byte_in_chunk(copied / "train-00001.h5", "masks", 2)
    result = run_cli("verify", copied)
    assert result.returncode == 1
    assert "train-00001.h5: sha256 differs" in result.stderr
    assert "train-00001.h5: sample 2 cannot be read" in result.stderr


def test_verify_catches_missing_shard(copied):
    (copied / "val-00000.h5").unlink()
    result = run_cli("verify", copied)
    assert result.returncode == 1
    assert "val-00000.h5: file missing" in result.stderr


def test_verify_rejects_unfinished_folder(copied):
    (copied / "manifest.json").unlink()
    result = run_cli("verify", copied)
    assert result.returncode == 1
    assert "did not finish" in result.stderr
