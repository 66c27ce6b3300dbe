"""`slfer train` end to end on tiny shards of real FER2013 faces, and its settings."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import run_cli
from pipeline.labels import CLASS_NAMES
from pipeline.mask_io import mask_path, write_mask
from slfer_model.checkpoint import load_checkpoint
from slfer_model.config import ConfigError, TrainConfig, load_config

# Tiny runs: 40-pixel shards, 32-pixel crops, batches of 4, two batches per epoch.
SMALL_RUN = ("--crop-size", "32", "--batch-size", "4", "--limit-batches", "2", "--workers", "0",
             "--deterministic")
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "epoch", "rng", "config", "class_names", "part_names",
                   "shard_size", "crop_size", "variant", "se", "best_accuracy", "slfer_version"}


def draw_face_mask(side: int, shift: int) -> np.ndarray:
    """A face-shaped 8-part mask: hair band, skin ellipse, eyes, nose and mouth, moved right by `shift`.

    The masks are drawn rather than parsed so that these tests need no face parser;
    training only needs masks of the right form.
    """
    mask = np.zeros((side, side), np.uint8)
    centre = side // 2 + shift
    cv2.ellipse(mask, (centre, side // 2), (side * 3 // 8, side * 7 // 16), 0, 0, 360, 1, -1)
    mask[: side // 5] = 7
    for left in (side // 4, side * 7 // 12):
        cv2.rectangle(mask, (left + shift, side * 3 // 8), (left + side // 6 + shift, side * 7 // 16), 2, -1)
    cv2.rectangle(mask, (side * 11 // 24 + shift, side // 2), (side * 13 // 24 + shift, side * 5 // 8), 4, -1)
    cv2.rectangle(mask, (side * 3 // 8 + shift, side * 11 // 16), (side * 5 // 8 + shift, side * 3 // 4), 5, -1)
    return mask


def copy_faces(fer2013_root: Path, root: Path, masks_dir: Path, split: str, source_split: str, count: int) -> None:
    """Copy `count` FER2013 faces, cycling through the classes, and draw a mask for each."""
    classes = sorted(folder.name for folder in (fer2013_root / source_split).iterdir())
    for number in range(count):
        class_name = classes[number % len(classes)]
        source = sorted((fer2013_root / source_split / class_name).glob("*.jpg"))[number // len(classes)]
        record_path = f"{split}/{class_name}/{source.name}"
        (root / record_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / record_path)
        write_mask(mask_path(masks_dir, record_path), draw_face_mask(48, number % 5 - 2))


@pytest.fixture(scope="session")
def shards_dir(fer2013_root, tmp_path_factory) -> Path:
    """Shards of 32 training and 14 test FER2013 faces at 40 pixels, built by `slfer build-shards`."""
    work = tmp_path_factory.mktemp("train-data")
    root, masks_dir, out_dir = work / "faces", work / "parsed", work / "shards"
    copy_faces(fer2013_root, root, masks_dir, "train", "train", 32)
    copy_faces(fer2013_root, root, masks_dir, "test", "val", 14)
    (masks_dir / "parser.json").write_text(json.dumps({"parser": "drawn-by-test", "weights_sha256": None}))

    result = run_cli("build-shards", root, "--format", "folder", "--masks", masks_dir, "--out", out_dir,
                     "--size", "40", "--workers", "0")
    assert result.returncode == 0, result.stderr
    return out_dir


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def train_cli(shards_dir: Path, run_dir: Path, *options: str) -> subprocess.CompletedProcess:
    return run_cli("train", "--shards", shards_dir, "--out", run_dir, *SMALL_RUN, *options)


@pytest.fixture(scope="session")
def one_epoch_run(shards_dir, tmp_path_factory) -> Path:
    """A finished one-epoch run of the proposed variant."""
    run_dir = tmp_path_factory.mktemp("runs") / "one-epoch"
    result = train_cli(shards_dir, run_dir, "--epochs", "1")
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.slow
def test_run_folder_files(one_epoch_run):
    names = {path.name for path in one_epoch_run.iterdir()}

    assert names == {"config.yaml", "metrics.csv", "last.pt", "best.pt", "curves.png"}


@pytest.mark.slow
def test_metrics_row(one_epoch_run):
    rows = read_rows(one_epoch_run)

    assert len(rows) == 1
    assert float(rows[0]["loss_segmentation"]) > 0
    assert float(rows[0]["loss_parts"]) > 0
    assert 0 <= float(rows[0]["val_accuracy"]) <= 1


@pytest.mark.slow
def test_checkpoint_contents(one_epoch_run):
    checkpoint = load_checkpoint(one_epoch_run / "last.pt", map_location="cpu")

    assert set(checkpoint) == CHECKPOINT_KEYS
    assert checkpoint["epoch"] == 1
    assert checkpoint["class_names"] == list(CLASS_NAMES)
    assert checkpoint["shard_size"] == 40
    assert checkpoint["crop_size"] == 32


@pytest.mark.slow
def test_best_checkpoint_has_no_optimizer(one_epoch_run):
    best = load_checkpoint(one_epoch_run / "best.pt", map_location="cpu")
    last = load_checkpoint(one_epoch_run / "last.pt", map_location="cpu")

    assert set(best) == CHECKPOINT_KEYS - {"optimizer", "scheduler", "rng"}
    assert all(torch.equal(best["model"][name], tensor) for name, tensor in last["model"].items())
    assert (one_epoch_run / "best.pt").stat().st_size < (one_epoch_run / "last.pt").stat().st_size / 2


@pytest.mark.slow
def test_existing_run_rejected(shards_dir, one_epoch_run):
    result = train_cli(shards_dir, one_epoch_run, "--epochs", "1")

    assert result.returncode == 1
    assert "--resume" in result.stderr


@pytest.mark.slow
def test_no_se_from_slfer_checkpoint(shards_dir, one_epoch_run, tmp_path):
    run_dir = tmp_path / "run"
    result = train_cli(shards_dir, run_dir, "--epochs", "1", "--no-se", "--pretrained", one_epoch_run / "best.pt")
    assert result.returncode == 0, result.stderr
    assert "training proposed without SE (" in result.stderr
    assert " for 1 epoch:" in result.stderr
    assert "loaded 120 of 120 backbone tensors" in result.stderr
    assert "skipped the 32 SE tensors" in result.stderr
    checkpoint = load_checkpoint(run_dir / "best.pt", map_location="cpu")
    assert checkpoint["se"] is False
    assert not [name for name in checkpoint["model"] if ".se." in name]

    result = run_cli("evaluate", "--shards", shards_dir, "--checkpoint", run_dir / "best.pt", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "proposed without SE" in result.stderr
    assert json.loads((run_dir / "eval-test" / "report.json").read_text())["se"] is False


@pytest.mark.slow
def test_resume_rejects_changed_settings(shards_dir, one_epoch_run):
    config_before = (one_epoch_run / "config.yaml").read_text()

    result = train_cli(shards_dir, one_epoch_run, "--epochs", "2", "--resume", "--lr", "0.5", "--batch-size", "8")

    assert result.returncode == 1
    assert "batch_size 8 (the run has 4)" in result.stderr
    assert "lr 0.5 (the run has 0.0001)" in result.stderr
    assert "Only epochs, workers, device" in result.stderr
    assert (one_epoch_run / "config.yaml").read_text() == config_before
    assert load_checkpoint(one_epoch_run / "last.pt", map_location="cpu")["epoch"] == 1


@pytest.mark.slow
def test_resume_keeps_se_setting(shards_dir, one_epoch_run):
    result = train_cli(shards_dir, one_epoch_run, "--epochs", "2", "--resume", "--no-se")

    assert result.returncode == 1
    assert "no_se" in result.stderr


@pytest.mark.slow
def test_baseline_has_no_auxiliary_losses(shards_dir, tmp_path):
    result = train_cli(shards_dir, tmp_path / "run", "--epochs", "1", "--variant", "baseline")

    assert result.returncode == 0, result.stderr
    row = read_rows(tmp_path / "run")[0]
    assert row["loss_segmentation"] == ""
    assert row["loss_parts"] == ""
    assert float(row["loss_total"]) == float(row["loss_expression"])


@pytest.mark.slow
def test_resume_matches_straight_run(shards_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_cli(shards_dir, straight, "--epochs", "2").returncode == 0
    assert train_cli(shards_dir, resumed, "--epochs", "1").returncode == 0

    # Every other setting, --shards included, comes from the run's checkpoint.
    result = run_cli("train", "--out", resumed, "--epochs", "2", "--resume")

    assert result.returncode == 0, result.stderr
    expected = load_checkpoint(straight / "last.pt", map_location="cpu")["model"]
    actual = load_checkpoint(resumed / "last.pt", map_location="cpu")["model"]
    assert [key for key in expected if not torch.equal(expected[key], actual[key])] == []
    assert read_rows(resumed)[1]["loss_total"] == read_rows(straight)[1]["loss_total"]


@pytest.mark.slow
def test_torchrun_two_processes(shards_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    slfer = Path(sys.executable).parent / "slfer"
    command = [str(torchrun), "--standalone", "--nproc-per-node=2", str(slfer), "train",
               "--shards", str(shards_dir), "--out", str(run_dir), "--epochs", "2", *SMALL_RUN]

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "best.pt", "config.yaml", "curves.png", "last.pt", "metrics.csv"]
    assert [row["epoch"] for row in read_rows(run_dir)] == ["1", "2"]


@pytest.mark.slow
def test_crop_larger_than_shards(shards_dir, tmp_path):
    result = run_cli("train", "--shards", shards_dir, "--out", tmp_path / "run", "--crop-size", "64")

    assert result.returncode == 1
    assert "crop_size 64 is larger than the 40-pixel images" in result.stderr


@pytest.mark.slow
def test_yaml_option_names(shards_dir, tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"shards: {shards_dir}\ncrop-size: 64\n")

    result = run_cli("train", "--config", config_file, "--out", tmp_path / "run")

    assert result.returncode == 1
    assert f"crop_size 64 is larger than the 40-pixel images stored in {shards_dir}" in result.stderr


@pytest.mark.slow
def test_pretrained_not_a_torch_file(shards_dir, tmp_path):
    fake = tmp_path / "fake.pth"
    fake.write_text("garbage\n")

    result = train_cli(shards_dir, tmp_path / "run", "--epochs", "1", "--pretrained", fake)

    assert result.returncode == 1
    assert f"cannot read pretrained weights {fake}: Unsupported operand" in result.stderr
    assert "Please file an issue" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_unknown_yaml_key(tmp_path):
    config_file = tmp_path / "train.yaml"
    config_file.write_text("epochs: 3\nlearning_rate: 0.1\n")

    result = run_cli("train", "--config", config_file, "--shards", tmp_path, "--out", tmp_path / "run")

    assert result.returncode == 1
    assert "unknown setting 'learning_rate'" in result.stderr
    assert "lambda_seg" in result.stderr


def test_defaults_are_paper_schedule():
    config = load_config(None, {"shards_dir": "shards", "out_dir": "run"})

    assert (config.epochs, config.batch_size, config.lr) == (40, 16, 1e-4)
    assert config.betas == (0.5, 0.999)
    assert config.milestones == (10, 18, 25, 32)
    assert (config.crop_size, config.lambda_seg, config.lambda_part) == (224, 0.5, 0.5)


def test_options_override_yaml(tmp_path):
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump({"epochs": 3, "lr": 0.01, "betas": [0.9, 0.99], "shards_dir": "s"}))

    config = load_config(config_file, {"epochs": 5, "milestones": "2,4", "out_dir": "run"})

    assert config.epochs == 5
    assert config.lr == 0.01
    assert config.betas == (0.9, 0.99)
    assert config.milestones == (2, 4)


def test_invalid_milestones():
    with pytest.raises(ConfigError, match="milestones must be increasing"):
        load_config(None, {"shards_dir": "s", "out_dir": "r", "milestones": "18,10"})


def test_config_round_trips_yaml(tmp_path):
    config = load_config(None, {"shards_dir": "s", "out_dir": "r", "betas": "0.9,0.99"})
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))

    assert load_config(config_file, {}) == config


def test_missing_shards_setting():
    with pytest.raises(ConfigError, match="--shards"):
        load_config(None, {"out_dir": "r"})


def test_config_fields_match_cli():
    from cli import train_command

    option_names = {parameter.name for parameter in train_command.params} - {"config_file"}

    assert option_names == {field for field in TrainConfig.__dataclass_fields__}
