"""`slfer parse-masks` end to end: masks, reports, parser.json, resume, shards and bad images."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from pipeline.images import decode_image
from pipeline.labels import PART_NAMES
from pipeline.parse_masks import parse_masks
from pipeline.mask_io import mask_path, read_mask, write_mask
from pipeline.parsers.base import file_sha256
from pipeline.parsers.bisenet import WEIGHTS_FILE, WEIGHTS_URL
from pipeline.parsers.class_map import load_class_map

EYE, NOSE, MOUTH, SKIN = (PART_NAMES.index(part) for part in ("eye", "nose", "mouth", "skin"))


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """A randomly initialised facexlib BiSeNet state dict, saved as a weights file."""
    from facexlib.parsing.bisenet import BiSeNet

    torch.manual_seed(0)
    model = BiSeNet(num_class=19)
    # Spread the batch-norm statistics so that the random model predicts several labels.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / WEIGHTS_FILE
    torch.save(model.state_dict(), path)
    return path


def make_dataset(root: Path, images: dict[str, list[Path]], per_class: int) -> Path:
    """Copy `per_class` FER2013 images of each class into ROOT/train/<class>/."""
    for class_name, paths in images.items():
        folder = root / "train" / class_name
        folder.mkdir(parents=True)
        for path in paths[:per_class]:
            shutil.copy(path, folder / path.name)
    return root


def read_report(out_dir: Path) -> list[dict]:
    """The lines of the newest report in OUT/reports."""
    newest = sorted((out_dir / "reports").glob("*.jsonl"))[-1]
    return [json.loads(line) for line in newest.read_text().splitlines()]


def mask_bytes(out_dir: Path) -> dict[str, bytes]:
    masks = out_dir / "masks"
    return {path.relative_to(masks).as_posix(): path.read_bytes() for path in sorted(masks.rglob("*.png"))}


def parse_in_process(dataset: Path, out_dir: Path, **options) -> int:
    """Run parse-masks in this process (no CLI start-up) as the CLI calls it, by default with the landmark parser."""
    settings = dict(label_order=None, skip_unknown=False, out_dir=out_dir, parser_name="landmarks", weights=None,
                    device="cpu", batch_size=4, workers=0, class_map=None, face_box="whole", num_shards=1,
                    shard_index=0, overwrite=False, limit=None, save_raw=False)
    settings.update(options)
    return parse_masks(dataset, "folder", **settings)


def wait_for_masks(process: subprocess.Popen, out_dir: Path, count: int = 10) -> None:
    """Wait until a running parse-masks has written `count` masks into `out_dir`, or has ended."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((out_dir / "masks").rglob("*.png"))) >= count:
            return
        time.sleep(0.05)


def test_mask_write_read_roundtrip(tmp_path):
    mask = np.random.default_rng(0).integers(0, 8, (13, 17), dtype=np.uint8)
    path = mask_path(tmp_path, "train/happy/a b.jpg")
    write_mask(path, mask)
    assert path == tmp_path / "masks" / "train" / "happy" / "a b.jpg.png"
    assert np.array_equal(read_mask(path), mask)
    assert list(path.parent.iterdir()) == [path]


@pytest.mark.slow
def test_bisenet_end_to_end(tmp_path, fer2013_images, random_weights):
    dataset = make_dataset(tmp_path / "data", {"happy": fer2013_images["happy"]}, per_class=3)
    out_dir = tmp_path / "out"
    result = run_cli("parse-masks", dataset, "--format", "folder", "--weights", random_weights, "--device", "cpu",
                     "--batch-size", "2", "--workers", "1", "--save-raw", "--out", out_dir)
    assert result.returncode == 0, result.stderr

    lines = read_report(out_dir)
    assert [line["status"] for line in lines] == ["done"] * 3
    assert {line["weights_sha256"] for line in lines} == {file_sha256(random_weights)}
    lookup = load_class_map().lookup
    for line in lines:
        mask = read_mask(out_dir / "masks" / (line["path"] + ".png"))
        raw = read_mask(out_dir / "raw" / (line["path"] + ".png"))
        assert mask.shape == decode_image(dataset / line["path"]).shape[:2]
        assert np.array_equal(mask, lookup[raw])
        assert line["pixel_counts"] == np.bincount(mask.ravel(), minlength=8).tolist()

    parser_file = json.loads((out_dir / "parser.json").read_text())
    assert parser_file["parser"] == "bisenet"
    assert parser_file["hidden_parts"] == []
    assert "3 done, 0 skipped as already done, 0 failed" in result.stderr


def test_bisenet_masks_same_for_any_batch_size(tmp_path, fer2013_images, random_weights):
    dataset = make_dataset(tmp_path / "data", {"sad": fer2013_images["sad"]}, per_class=5)
    masks = []
    for name, batch_size, workers in (("defaults", None, None), ("batched", 3, 1)):
        status = parse_in_process(dataset, tmp_path / name, parser_name="bisenet", weights=random_weights,
                                 batch_size=batch_size, workers=workers)
        assert status == 0
        masks.append(mask_bytes(tmp_path / name))
    assert len(masks[0]) == 5
    assert masks[0] == masks[1]


@pytest.mark.slow
def test_offline_without_weights(tmp_path, fer2013_images):
    dataset = make_dataset(tmp_path / "data", {"happy": fer2013_images["happy"]}, per_class=1)
    environment = dict(os.environ, SLFER_CACHE=str(tmp_path / "cache"),
                       https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    console_script = Path(sys.executable).parent / "slfer"
    result = subprocess.run(
        [str(console_script), "parse-masks", str(dataset), "--format", "folder", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=environment, timeout=600,
    )
    assert result.returncode == 1
    assert WEIGHTS_URL in result.stderr
    assert str(tmp_path / "cache" / "weights" / WEIGHTS_FILE) in result.stderr
    assert "Traceback" not in result.stderr


def test_shard_index_out_of_range(tmp_path, fer2013_root):
    result = run_cli("parse-masks", fer2013_root, "--format", "folder", "--parser", "landmarks",
                     "--num-shards", "2", "--shard-index", "2", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "--shard-index 2 is out of range for --num-shards 2" in result.stderr


def test_rerun_skips_done(tmp_path, fer2013_images):
    dataset = make_dataset(tmp_path / "data", fer2013_images, per_class=1)
    out_dir = tmp_path / "out"
    assert parse_in_process(dataset, out_dir) == 0
    first = mask_bytes(out_dir)
    assert parse_in_process(dataset, out_dir) == 0
    assert {line["status"] for line in read_report(out_dir)} == {"skipped"}
    assert mask_bytes(out_dir) == first


def test_rerun_other_parser_rejected(tmp_path, fer2013_images, caplog):
    dataset = make_dataset(tmp_path / "data", {"sad": fer2013_images["sad"]}, per_class=2)
    out_dir = tmp_path / "out"
    assert parse_in_process(dataset, out_dir) == 0
    assert parse_in_process(dataset, out_dir, face_box="detect") == 1
    assert "use another --out, or pass --overwrite" in caplog.text
    assert parse_in_process(dataset, out_dir, face_box="detect", overwrite=True) == 0
    assert json.loads((out_dir / "parser.json").read_text())["settings"]["face_box"] == "detect"


@pytest.mark.slow
def test_resume_after_kill(tmp_path, fer2013_images):
    dataset = make_dataset(tmp_path / "data", fer2013_images, per_class=20)
    total = sum(1 for _ in dataset.rglob("*.jpg"))
    clean_dir, resumed_dir = tmp_path / "clean", tmp_path / "resumed"
    assert parse_in_process(dataset, clean_dir) == 0

    console_script = Path(sys.executable).parent / "slfer"
    process = subprocess.Popen(
        [str(console_script), "parse-masks", str(dataset), "--format", "folder", "--parser", "landmarks",
         "--out", str(resumed_dir), "--workers", "0", "--batch-size", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_masks(process, resumed_dir)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written_before_kill = len(list((resumed_dir / "masks").rglob("*.png")))
    assert 0 < written_before_kill < total

    assert parse_in_process(dataset, resumed_dir) == 0
    skipped = [line for line in read_report(resumed_dir) if line["status"] == "skipped"]
    assert len(skipped) == written_before_kill
    assert mask_bytes(resumed_dir) == mask_bytes(clean_dir)


@pytest.mark.slow
def test_ctrl_c_says_how_to_continue(tmp_path, fer2013_root):
    out_dir = tmp_path / "out"
    console_script = Path(sys.executable).parent / "slfer"
    process = subprocess.Popen(
        [str(console_script), "parse-masks", str(fer2013_root), "--format", "folder", "--parser", "landmarks",
         "--limit", "5000", "--workers", "0", "--out", str(out_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    wait_for_masks(process, out_dir)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert "interrupted: finished masks are kept, so run the same command again" in stderr
    assert "Traceback" not in stderr


def test_shards_cover_dataset(tmp_path, fer2013_images):
    dataset = make_dataset(tmp_path / "data", fer2013_images, per_class=3)
    whole_dir, sharded_dir = tmp_path / "whole", tmp_path / "sharded"
    assert parse_in_process(dataset, whole_dir) == 0

    shard_paths = []
    for index in range(3):
        assert parse_in_process(dataset, sharded_dir, num_shards=3, shard_index=index) == 0
        report = sorted((sharded_dir / "reports").glob(f"*-{index}-of-3.jsonl"))[-1]
        shard_paths.append({json.loads(line)["path"] for line in report.read_text().splitlines()})

    whole_paths = {line["path"] for line in read_report(whole_dir)}
    assert not shard_paths[0] & shard_paths[1]
    assert not shard_paths[0] & shard_paths[2]
    assert not shard_paths[1] & shard_paths[2]
    assert shard_paths[0] | shard_paths[1] | shard_paths[2] == whole_paths
    assert mask_bytes(sharded_dir) == mask_bytes(whole_dir)


def write_bad_images(folder: Path, real_jpeg: Path) -> dict[str, tuple[str, tuple[int, int] | None]]:
    """Write one file of each awkward kind; return file name -> (expected status, expected mask size)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    jpeg = real_jpeg.read_bytes()
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(500))
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8), "L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (18, 22, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    cv2.imwrite(str(folder / "deep.png"), rng.integers(0, 65536, (16, 26), dtype=np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide and 30 high, shown rotated 90 degrees clockwise
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)).save(folder / "tiny.png")
    return {
        "corrupt.jpg": ("failed", None), "truncated.jpg": ("failed", None), "empty.jpg": ("failed", None),
        "grey.png": ("done", (20, 24)), "rgba.png": ("done", (18, 22)), "deep.png": ("done", (16, 26)),
        "rotated.jpg": ("done", (40, 30)), "tiny.png": ("done", (2, 3)),
    }


@pytest.mark.slow
def test_bad_images_reported(tmp_path, fer2013_images, random_weights):
    dataset = tmp_path / "data"
    expected = write_bad_images(dataset / "train" / "happy", fer2013_images["happy"][0])
    out_dir = tmp_path / "out"
    result = run_cli("parse-masks", dataset, "--format", "folder", "--weights", random_weights, "--device", "cpu",
                     "--batch-size", "4", "--workers", "2", "--out", out_dir)
    assert result.returncode == 0, result.stderr

    lines = {Path(line["path"]).name: line for line in read_report(out_dir)}
    assert set(lines) == set(expected)
    for name, (status, size) in expected.items():
        assert lines[name]["status"] == status, name
        if status == "failed":
            assert lines[name]["error"], name
            assert not mask_path(out_dir, lines[name]["path"]).exists(), name
        else:
            assert read_mask(mask_path(out_dir, lines[name]["path"])).shape == size, name
    assert "5 done, 0 skipped as already done, 3 failed" in result.stderr


def parts_inside_face(mask: np.ndarray) -> bool:
    """Tell whether eye, nose and mouth lie inside the face, in the order a face has them.

    The face is the convex hull of the skin pixels. Each of eye, nose and mouth
    must have pixels, 95% of them inside that hull, the eye centroid above the
    nose centroid above the mouth centroid, and the nose and mouth centroids
    between the leftmost and rightmost eye pixels.
    """
    skin = np.argwhere(mask == SKIN)
    if len(skin) < 3:
        return False
    hull = cv2.convexHull(skin[:, ::-1].astype(np.int32))
    face = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(face, hull, 1)

    centroids = {}
    for part in (EYE, NOSE, MOUTH):
        pixels = mask == part
        if not pixels.any() or face[pixels].mean() < 0.95:
            return False
        rows, columns = np.nonzero(pixels)
        centroids[part] = (rows.mean(), columns.mean())
    eye_columns = np.nonzero(mask == EYE)[1]
    in_order = centroids[EYE][0] < centroids[NOSE][0] < centroids[MOUTH][0]
    centred = all(eye_columns.min() <= centroids[part][1] <= eye_columns.max() for part in (NOSE, MOUTH))
    return in_order and centred


def test_landmarks_of_partly_covered_face(fer2013_root):
    # A tilted face half covered by a hand: the whole-image box gives landmarks
    # with the nose above the eyes, and dlib's detector scores the face below
    # its own threshold of 0. The detector's best box gives a usable mask.
    from pipeline.parsers.landmarks import LandmarkMasker

    image = decode_image(fer2013_root / "train" / "sad" / "Training_28593309.jpg")
    assert parts_inside_face(LandmarkMasker("whole")(image).parts)


def test_landmark_parts_inside_face(tmp_path, fer2013_images):
    dataset = make_dataset(tmp_path / "data", fer2013_images, per_class=20)
    out_dir = tmp_path / "out"
    assert parse_in_process(dataset, out_dir) == 0

    lines = read_report(out_dir)
    passed = [line["status"] == "done" and parts_inside_face(read_mask(mask_path(out_dir, line["path"])))
              for line in lines]
    assert len(lines) == 140
    assert sum(passed) >= 0.9 * len(lines)


@pytest.mark.slow
def test_landmarks_on_500_fer2013_images(tmp_path, fer2013_root):
    out_dir = tmp_path / "out"
    result = run_cli("parse-masks", fer2013_root, "--format", "folder", "--parser", "landmarks", "--limit", "500",
                     "--out", out_dir)
    assert result.returncode == 0, result.stderr
    masks = sorted((out_dir / "masks").rglob("*.png"))
    assert len(masks) == 500, result.stderr
    assert sum(parts_inside_face(read_mask(path)) for path in masks) >= 0.9 * 500


def test_limit_spreads_over_classes(tmp_path, fer2013_images):
    dataset = make_dataset(tmp_path / "data", fer2013_images, per_class=2)
    out_dir = tmp_path / "out"
    assert parse_in_process(dataset, out_dir, limit=7) == 0

    lines = read_report(out_dir)
    classes = {Path(line["path"]).parent.name for line in lines}
    assert len(lines) == 7
    assert classes == set(fer2013_images)
