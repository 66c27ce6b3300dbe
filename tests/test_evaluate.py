"""slfer evaluate and slfer compare: refusals, flip TTA, the confusion PNG and end-to-end runs."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from pipeline.labels import CLASS_NAMES, PART_NAMES
from slfer_model.checkpoint import load_checkpoint, save_checkpoint
from slfer_model.compare import EvaluationError, compare_runs, order_reports
from slfer_model.evaluate import check_compatible, evaluate, plan_jobs, predict_probabilities
from slfer_model.metrics import classification_metrics
from slfer_model.network import build_model
from slfer_model.plots import DPI, FIGURE_INCHES, plot_confusion

SHARDS = Path("/data/shards")
CHECKPOINT = Path("/runs/proposed/best.pt")


def checkpoint_fields(**changes) -> dict:
    fields = {"class_names": list(CLASS_NAMES), "part_names": list(PART_NAMES), "shard_size": 64, "crop_size": 56}
    return {**fields, **changes}


def shard_fields(**changes) -> dict:
    fields = {"class_names": list(CLASS_NAMES), "part_names": list(PART_NAMES), "size": 64}
    return {**fields, **changes}


def rejection_message(checkpoint: dict, shards: dict) -> str:
    with pytest.raises(EvaluationError) as caught:
        check_compatible(checkpoint, shards, CHECKPOINT, SHARDS)
    return str(caught.value)


def test_matching_checkpoint_accepted():
    check_compatible(checkpoint_fields(), shard_fields(), CHECKPOINT, SHARDS)


def test_class_names_mismatch_rejected():
    reordered = ["happy", *[name for name in CLASS_NAMES if name != "happy"]]
    message = rejection_message(checkpoint_fields(class_names=reordered), shard_fields())
    assert str(reordered) in message
    assert str(list(CLASS_NAMES)) in message


def test_part_names_mismatch_rejected():
    renamed = [*PART_NAMES[:-1], "hat"]
    message = rejection_message(checkpoint_fields(), shard_fields(part_names=renamed))
    assert str(list(PART_NAMES)) in message
    assert str(renamed) in message


def test_shard_size_mismatch_rejected():
    message = rejection_message(checkpoint_fields(shard_size=112), shard_fields(size=64))
    assert "size 112" in message
    assert "size 64" in message


def test_crop_larger_than_shards_rejected():
    message = rejection_message(checkpoint_fields(shard_size=None, crop_size=96), shard_fields(size=64))
    assert "crop size 96" in message
    assert "size 64" in message


@pytest.fixture(scope="module")
def inference_model():
    torch.manual_seed(0)
    return build_model("baseline").inference_model().eval()


def test_flip_tta_averages_mirror_probabilities(inference_model):
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        original = torch.softmax(inference_model(images), dim=1)
        mirrored = torch.softmax(inference_model(torch.flip(images, dims=[-1])), dim=1)
    averaged = predict_probabilities(inference_model, images, tta_flip=True)
    torch.testing.assert_close(averaged, (original + mirrored) / 2)


def test_flip_tta_changes_asymmetric_output(inference_model):
    images = torch.rand(3, 3, 32, 32)
    plain = predict_probabilities(inference_model, images, tta_flip=False)
    averaged = predict_probabilities(inference_model, images, tta_flip=True)
    assert not torch.allclose(plain, averaged)


def test_flip_tta_keeps_symmetric_output(inference_model):
    half = torch.rand(2, 3, 32, 16)
    images = torch.cat([half, torch.flip(half, dims=[-1])], dim=-1)
    plain = predict_probabilities(inference_model, images, tta_flip=False)
    averaged = predict_probabilities(inference_model, images, tta_flip=True)
    torch.testing.assert_close(averaged, plain)


def test_probabilities_sum_to_one(inference_model):
    probabilities = predict_probabilities(inference_model, torch.rand(4, 3, 32, 32), tta_flip=True)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(4))


def test_confusion_png_opens_at_figure_size(tmp_path):
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 6])
    predictions = np.array([0, 1, 2, 3, 4, 5, 6, 0])
    metrics = classification_metrics(labels, predictions, CLASS_NAMES)
    path = plot_confusion(
        metrics.confusion, metrics.confusion_normalised, CLASS_NAMES, metrics.accuracy, tmp_path / "confusion.png",
    )
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (round(FIGURE_INCHES[0] * DPI), round(FIGURE_INCHES[1] * DPI))
    assert [entry.name for entry in tmp_path.iterdir()] == ["confusion.png"]


def test_default_output_beside_checkpoint(tmp_path):
    [job] = plan_jobs([tmp_path / "run" / "best.pt"], "test", None)
    assert job.out_dir == tmp_path / "run" / "eval-test"
    assert job.run_name == "run"


def test_checkpoints_of_one_run_get_own_folders(tmp_path):
    jobs = plan_jobs([tmp_path / "run" / "best.pt", tmp_path / "run" / "last.pt"], "val", None)
    assert [job.out_dir.name for job in jobs] == ["eval-val-best", "eval-val-last"]


def test_several_checkpoints_share_out_folder(tmp_path):
    jobs = plan_jobs([tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt"], "test", tmp_path / "out")
    assert [job.out_dir for job in jobs] == [tmp_path / "out" / "a", tmp_path / "out" / "b"]


def test_evaluate_rejects_run_folder(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").touch()

    assert evaluate(tmp_path / "shards", [run], device="cpu", workers=0) == 1
    assert f"checkpoint {run} is a folder" in caplog.text
    assert f"pass --checkpoint {run / 'best.pt'}" in caplog.text
    assert "Errno" not in caplog.text


def test_evaluate_rejects_folder_without_checkpoint(tmp_path, caplog):
    assert evaluate(tmp_path / "shards", [tmp_path], device="cpu", workers=0) == 1
    assert f"checkpoint {tmp_path} is a folder without best.pt or last.pt" in caplog.text


def test_reports_ordered_like_ablation_table():
    variants = ["proposed", "custom", "baseline", "ct+st", "st", "ct"]
    reports = order_reports([{"variant": variant} for variant in variants])
    assert [report["variant"] for report in reports] == ["baseline", "ct", "st", "ct+st", "proposed", "custom"]


# End-to-end runs through the CLI on shards of real FER2013 faces. One image
# per class and split keeps the runs short, so the accuracies are noise. The
# tests check files, counts and agreement between outputs, not model quality.

SHARD_SIZE = "64"
CROP_SIZE = "56"


def check_run(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def evaluated_runs(fer2013_root, tmp_path_factory):
    """Shards of 14 real faces, two trained variants, and one evaluate call over both."""
    work = tmp_path_factory.mktemp("evaluate")
    faces = work / "faces"
    for split in ("train", "val"):
        for class_dir in sorted((fer2013_root / split).iterdir()):
            folder = faces / split / class_dir.name
            folder.mkdir(parents=True)
            first = sorted(class_dir.glob("*.jpg"))[0]
            (folder / first.name).symlink_to(first)

    check_run(run_cli("parse-masks", faces, "--format", "folder", "--out", work / "masks",
                      "--parser", "landmarks", "--workers", "0"))
    check_run(run_cli("build-shards", faces, "--format", "folder", "--masks", work / "masks",
                      "--out", work / "shards", "--size", SHARD_SIZE, "--workers", "0"))
    for variant in ("proposed", "baseline"):
        check_run(run_cli("train", "--shards", work / "shards", "--out", work / variant, "--variant", variant,
                          "--epochs", "1", "--limit-batches", "2", "--batch-size", "2",
                          "--crop-size", CROP_SIZE, "--workers", "0", "--device", "cpu"))

    # No --split: shards without a test split are evaluated on val.
    result = run_cli("evaluate", "--shards", work / "shards",
                     "--checkpoint", work / "proposed" / "best.pt", "--checkpoint", work / "baseline" / "best.pt",
                     "--tta-flip", "--workers", "0", "--device", "cpu")
    check_run(result)
    return work, result


def read_report(eval_dir: Path) -> dict:
    return json.loads((eval_dir / "report.json").read_text())


def read_predictions(eval_dir: Path) -> list[dict]:
    with open(eval_dir / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_evaluate_writes_four_files(evaluated_runs):
    work, _ = evaluated_runs
    names = sorted(path.name for path in (work / "proposed" / "eval-val").iterdir())
    assert names == ["confusion.csv", "confusion.png", "predictions.csv", "report.json"]


@pytest.mark.slow
def test_predictions_cover_split(evaluated_runs):
    work, _ = evaluated_runs
    rows = read_predictions(work / "proposed" / "eval-val")
    assert len(rows) == len(CLASS_NAMES)
    assert sorted(row["label"] for row in rows) == sorted(CLASS_NAMES)
    assert all(row["path"].startswith("val/") for row in rows)


@pytest.mark.slow
def test_accuracy_recomputed_from_predictions(evaluated_runs):
    work, _ = evaluated_runs
    for variant in ("proposed", "baseline"):
        eval_dir = work / variant / "eval-val"
        rows = read_predictions(eval_dir)
        correct = sum(row["label"] == row["prediction"] for row in rows)
        assert read_report(eval_dir)["accuracy"] == pytest.approx(correct / len(rows))


@pytest.mark.slow
def test_prediction_is_most_probable_class(evaluated_runs):
    work, _ = evaluated_runs
    for row in read_predictions(work / "proposed" / "eval-val"):
        probabilities = [float(row[f"probability_{name}"]) for name in CLASS_NAMES]
        assert row["prediction"] == CLASS_NAMES[int(np.argmax(probabilities))]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_report_records_settings(evaluated_runs):
    work, _ = evaluated_runs
    report = read_report(work / "baseline" / "eval-val")
    assert report["variant"] == "baseline"
    assert report["split"] == "val"
    assert report["tta_flip"] is True
    assert report["num_samples"] == len(CLASS_NAMES)


@pytest.mark.slow
def test_confusion_csv_matches_report(evaluated_runs):
    work, _ = evaluated_runs
    eval_dir = work / "proposed" / "eval-val"
    with open(eval_dir / "confusion.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    counts = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=int)
    for row in rows:
        counts[CLASS_NAMES.index(row["label"]), CLASS_NAMES.index(row["prediction"])] = int(row["count"])
    assert len(rows) == len(CLASS_NAMES) ** 2
    assert counts.tolist() == read_report(eval_dir)["confusion"]


@pytest.mark.slow
def test_evaluate_logs_comparison(evaluated_runs):
    _, result = evaluated_runs
    table = result.stderr.split("comparison on split val:")[1]
    assert table.index("baseline") < table.index("proposed")


@pytest.mark.slow
def test_compare_orders_variants(evaluated_runs):
    work, _ = evaluated_runs
    result = run_cli("compare", work / "proposed", work / "baseline" / "eval-val" / "report.json")
    check_run(result)
    rows = [line.split() for line in result.stderr.splitlines() if line.startswith(("proposed", "baseline"))]
    assert [row[1] for row in rows] == ["baseline", "proposed"]


@pytest.mark.slow
def test_compare_reads_folder_of_runs(evaluated_runs, caplog):
    work, _ = evaluated_runs
    caplog.set_level(logging.INFO, logger="slfer_model.compare")
    assert compare_runs([work]) == 0
    assert "comparison of 2 evaluations" in caplog.text


def test_compare_rejects_unevaluated_run(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="slfer_model.compare")
    assert compare_runs([tmp_path]) == 1
    assert f"no report.json found in {tmp_path}" in caplog.text
    assert f"run slfer evaluate --shards SHARDS --checkpoint {tmp_path / 'best.pt'} first" in caplog.text
    assert "comparison of" not in caplog.text


@pytest.mark.slow
def test_compare_tables_runs_beside_unevaluated_one(evaluated_runs, tmp_path):
    work, _ = evaluated_runs
    unevaluated = tmp_path / "unevaluated"
    unevaluated.mkdir()

    result = run_cli("compare", work / "proposed", unevaluated, work / "baseline")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    rows = [line.split() for line in result.stderr.splitlines() if line.startswith(("proposed", "baseline"))]
    assert result.returncode == 1
    assert len(warnings) == 1
    assert f"no report.json found in {unevaluated}" in warnings[0]
    assert "comparison of 2 evaluations:" in result.stderr
    assert [row[1] for row in rows] == ["baseline", "proposed"]


@pytest.mark.slow
def test_compare_skips_unreadable_report(evaluated_runs, tmp_path, caplog):
    work, _ = evaluated_runs
    broken = tmp_path / "report.json"
    broken.write_text("{")
    caplog.set_level(logging.INFO, logger="slfer_model.compare")

    assert compare_runs([broken, work / "proposed"]) == 1
    assert f"cannot read {broken} as JSON" in caplog.text
    assert "comparison of 1 evaluation:" in caplog.text


@pytest.mark.slow
def test_evaluate_rejects_other_class_order(evaluated_runs, tmp_path, caplog):
    work, _ = evaluated_runs
    checkpoint = load_checkpoint(work / "proposed" / "best.pt", map_location="cpu")
    checkpoint["class_names"] = list(reversed(CLASS_NAMES))
    save_checkpoint(tmp_path / "reordered" / "best.pt", checkpoint)

    status = evaluate(work / "shards", [tmp_path / "reordered" / "best.pt"], split="val", device="cpu", workers=0)
    assert status == 1
    assert str(list(reversed(CLASS_NAMES))) in caplog.text
    assert str(list(CLASS_NAMES)) in caplog.text
    assert not (tmp_path / "reordered" / "eval-val").exists()


@pytest.mark.slow
def test_evaluate_rejects_non_checkpoint_file(evaluated_runs, tmp_path):
    work, _ = evaluated_runs
    fake = tmp_path / "fake.pth"
    fake.write_text("garbage\n")

    result = run_cli("evaluate", "--shards", work / "shards", "--checkpoint", fake,
                     "--workers", "0", "--device", "cpu")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ERROR")
    assert str(fake) in lines[0]


@pytest.mark.slow
def test_evaluate_rejects_missing_split(evaluated_runs, caplog):
    work, _ = evaluated_runs
    status = evaluate(work / "shards", [work / "proposed" / "best.pt"], split="test", device="cpu", workers=0)
    assert status == 1
    assert "no split 'test'" in caplog.text
