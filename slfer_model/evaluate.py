"""`slfer evaluate`: score checkpoints on a shard split.

For each checkpoint, evaluation writes to its EVAL folder (default
`<checkpoint folder>/eval-<split>/`):
- `report.json`: settings, overall and mean class accuracy, per-class
  precision, recall, F1 and support, and the confusion matrix as counts and
  row-normalised;
- `predictions.csv`: one row per image with its index in the split, path,
  true class, predicted class and the probability of each class;
- `confusion.csv`: one row per (true class, predicted class) pair with the
  count and the fraction of the true class;
- `confusion.png`: the row-normalised matrix with counts.
Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.devices import DeviceError, resolve_device
from pipeline.shard_reader import ShardDataset, ShardFolderError, default_eval_split, load_manifest
from pipeline.text import count_noun
from slfer_model.checkpoint import CheckpointError, load_checkpoint
from slfer_model.compare import REPORT_NAME, EvaluationError, format_comparison_table
from slfer_model.metrics import ClassificationMetrics, classification_metrics
from slfer_model.network import VARIANTS, build_model
from slfer_model.plots import plot_confusion
from slfer_model.variants import variant_label

logger = logging.getLogger(__name__)

# With --tta-flip, the softmax probabilities of an image and of its mirror
# image are averaged; the prediction is the class of highest mean probability.
TTA_AVERAGE = "softmax probabilities"

PREDICTIONS_NAME = "predictions.csv"
CONFUSION_CSV_NAME = "confusion.csv"
CONFUSION_PNG_NAME = "confusion.png"



@dataclass(frozen=True)
class EvaluationJob:
    """One checkpoint to evaluate, the name it is reported under, and its output folder."""

    checkpoint: Path
    run_name: str
    out_dir: Path


# ---------------------------------------------------------------------------
# slfer evaluate


def evaluate(
    shards_dir: Path,
    checkpoints: Sequence[Path],
    split: str | None = None,
    tta_flip: bool = False,
    out_dir: Path | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 2,
) -> int:
    """Evaluate each checkpoint on one shard split and write its EVAL folder.

    Args:
        shards_dir: folder written by build-shards.
        checkpoints: checkpoint files; with more than one, a comparison table follows.
        split: shard split to evaluate; None picks "test" when the shards have
            it (RAF-DB), else "val" (SFEW 2.0, FER2013 folders).
        tta_flip: average the softmax probabilities of each image and its mirror.
        out_dir: EVAL folder for one checkpoint, or parent of one folder per run
            for several; default `<checkpoint folder>/eval-<split>/`.
        device: auto, cpu, cuda or cuda:N.
        batch_size: images per forward pass.
        workers: DataLoader worker processes.

    Returns:
        Exit status: 0 when every checkpoint was evaluated, 1 otherwise.
    """
    folder_errors = checkpoint_folder_errors(checkpoints)
    for error in folder_errors:
        logger.error("%s", error)
    if folder_errors:
        return 1

    try:
        torch_device = resolve_device(device)
        split = split or default_split(shards_dir)
        shards = read_shard_settings(shards_dir, split)
        jobs = plan_jobs(checkpoints, split, out_dir)
    except (DeviceError, EvaluationError) as error:
        logger.error("%s", error)
        return 1

    reports = []
    failures = 0
    for job in jobs:
        try:
            reports.append(evaluate_checkpoint(
                job, shards_dir, shards, split, tta_flip, torch_device, batch_size, workers,
            ))
        except EvaluationError as error:
            logger.error("%s", error)
            failures += 1

    if len(jobs) > 1 and reports:
        logger.info("comparison on split %s:\n%s", split, format_comparison_table(reports))
    return 1 if failures else 0


def default_split(shards_dir: Path) -> str:
    """Return "test" when the shards have that split, else "val"."""
    try:
        splits = load_manifest(shards_dir)["splits"]
    except ShardFolderError as error:
        raise EvaluationError(str(error)) from error
    # With neither split, "test" makes the shard reader's error name the split it looked for.
    return default_eval_split(splits) or "test"


def read_shard_settings(shards_dir: Path, split: str) -> dict:
    """Read the class names, part names and stored size of a shard folder that has `split`.

    Returns:
        A dict with `class_names`, `part_names` and `size`, as `check_compatible` takes it.
    """
    try:
        dataset = ShardDataset(shards_dir, split)
    except ShardFolderError as error:
        raise EvaluationError(str(error)) from error
    except (OSError, ValueError, KeyError) as error:
        raise EvaluationError(f"cannot read split {split!r} of shards {shards_dir}: {error!r}") from error
    return {"class_names": list(dataset.class_names), "part_names": list(dataset.part_names), "size": dataset.size}


def checkpoint_folder_errors(checkpoints: Sequence[Path]) -> list[str]:
    """Return one error message for each checkpoint path that is a folder, suggesting the run's checkpoint file."""
    errors = []
    for path in map(Path, checkpoints):
        if not path.is_dir():
            continue
        found = [path / name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        if found:
            errors.append(f"checkpoint {path} is a folder, not a checkpoint file; pass --checkpoint {found[0]}")
        else:
            errors.append(
                f"checkpoint {path} is a folder without best.pt or last.pt; "
                f"pass a checkpoint file written by slfer train, such as RUN/best.pt"
            )
    return errors


def plan_jobs(checkpoints: Sequence[Path], split: str, out_dir: Path | None) -> list[EvaluationJob]:
    """Give each checkpoint a run name and an output folder, no two alike.

    The run name is the checkpoint's folder name, followed by the file stem
    when two checkpoints share a folder (best.pt and last.pt of one run).
    """
    checkpoints = [Path(path) for path in checkpoints]
    folders = [path.resolve().parent for path in checkpoints]
    shared = {folder for folder in folders if folders.count(folder) > 1}
    if len(set(path.resolve() for path in checkpoints)) < len(checkpoints):
        raise EvaluationError("the same checkpoint is given twice with --checkpoint; give each once")

    jobs = []
    for path, folder in zip(checkpoints, folders):
        suffix = f"-{path.stem}" if folder in shared else ""
        run_name = f"{folder.name}{suffix}"
        if out_dir is None:
            target = folder / f"eval-{split}{suffix}"
        elif len(checkpoints) == 1:
            target = Path(out_dir)
        else:
            target = Path(out_dir) / run_name
        jobs.append(EvaluationJob(path, run_name, target))

    targets = [job.out_dir.resolve() for job in jobs]
    if len(set(targets)) < len(targets):
        raise EvaluationError(
            "two checkpoints would write to the same folder because their run folders have the same name; "
            "evaluate them in separate commands with --out"
        )
    return jobs


def evaluate_checkpoint(
    job: EvaluationJob,
    shards_dir: Path,
    shards: dict,
    split: str,
    tta_flip: bool,
    device: torch.device,
    batch_size: int,
    workers: int,
) -> dict:
    """Evaluate one checkpoint, write its four files and log its table.

    Returns:
        The report written to report.json.
    """
    checkpoint = load_checkpoint_for_evaluation(job.checkpoint, device)
    check_compatible(checkpoint, shards, job.checkpoint, shards_dir)
    model = load_inference_model(checkpoint, job.checkpoint, device)

    loader = make_loader(shards_dir, split, checkpoint["crop_size"], batch_size, workers, device)
    predictions = predict_split(model, loader, device, tta_flip, description=f"evaluate {job.run_name}")

    class_names = tuple(checkpoint["class_names"])
    metrics = classification_metrics(predictions.labels, predictions.predicted, class_names)
    report = build_report(job, checkpoint, metrics, shards_dir, split, tta_flip, device)
    write_outputs(job.out_dir, report, metrics, predictions, class_names, title=f"{job.run_name} on {split}")

    logger.info("%s", format_report_table(report))
    logger.info("wrote %s", ", ".join(str(job.out_dir / name) for name in output_names()))
    return report


def output_names() -> tuple[str, ...]:
    return REPORT_NAME, PREDICTIONS_NAME, CONFUSION_CSV_NAME, CONFUSION_PNG_NAME


# ---------------------------------------------------------------------------
# Checkpoint checks and model loading


def load_checkpoint_for_evaluation(path: Path, device: torch.device) -> dict:
    """Load a checkpoint onto `device` and check that it contains what evaluation needs."""
    try:
        checkpoint = load_checkpoint(path, map_location=device)
    except CheckpointError as error:
        raise EvaluationError(str(error)) from error

    required = ("model", "class_names", "part_names", "crop_size", "variant")
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise EvaluationError(
            f"checkpoint {path} is missing {', '.join(missing)}; pass a best.pt or last.pt written by slfer train"
        )
    return checkpoint


def check_compatible(checkpoint: dict, shards: dict, checkpoint_path: Path, shards_dir: Path) -> None:
    """Reject a checkpoint whose classes, parts or input size disagree with the shards.

    Args:
        checkpoint: the loaded checkpoint dict.
        shards: `class_names`, `part_names` and `size` of the shard folder.
        checkpoint_path: the checkpoint file, named in the message.
        shards_dir: the shard folder, named in the message.

    Raises:
        EvaluationError: naming the checkpoint's value and the shards' value.
    """
    for key in ("class_names", "part_names"):
        trained = list(checkpoint[key])
        stored = list(shards[key])
        if trained != stored:
            raise EvaluationError(
                f"checkpoint {checkpoint_path} has {key} {trained} but shards {shards_dir} have {stored}; "
                f"evaluate on shards built with the same {key.replace('_', ' ')}"
            )

    shard_size = int(shards["size"])
    trained_size = checkpoint.get("shard_size")
    if trained_size is not None and int(trained_size) != shard_size:
        raise EvaluationError(
            f"checkpoint {checkpoint_path} was trained on shards of size {trained_size} but shards {shards_dir} "
            f"have size {shard_size}; rebuild the shards with --size {trained_size}"
        )

    crop_size = int(checkpoint["crop_size"])
    if crop_size > shard_size:
        raise EvaluationError(
            f"checkpoint {checkpoint_path} has crop size {crop_size} but shards {shards_dir} have size "
            f"{shard_size}, smaller than the crop; rebuild the shards with --size {crop_size} or larger"
        )


def load_inference_model(checkpoint: dict, checkpoint_path: Path, device: torch.device) -> nn.Module:
    """Build the checkpoint's variant, load its weights and return the backbone and expression head."""
    variant = checkpoint["variant"]
    try:
        # Checkpoints written before the "se" entry existed follow their variant.
        model = build_model(variant, num_classes=len(checkpoint["class_names"]),
                            num_parts=len(checkpoint["part_names"]), se=checkpoint.get("se"))
    except ValueError as error:
        raise EvaluationError(f"checkpoint {checkpoint_path}: {error}") from error

    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        # torch lists every mismatched key on its own line; the message is kept to one line.
        detail = " ".join(str(error).split())
        raise EvaluationError(
            f"checkpoint {checkpoint_path} does not match the {variant} network ({detail[:400]}); "
            f"pass a checkpoint written by slfer train"
        ) from error

    inference_model = model.inference_model().to(device)
    inference_model.eval()
    return inference_model


# ---------------------------------------------------------------------------
# Prediction


@dataclass(frozen=True)
class SplitPredictions:
    """Per-image outputs over a split, in the reader's order."""

    indices: np.ndarray
    paths: list[str]
    labels: np.ndarray
    probabilities: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def make_loader(
    shards_dir: Path, split: str, crop_size: int, batch_size: int, workers: int, device: torch.device,
) -> DataLoader:
    """Read `split` in stored order with the test-time centre crop."""
    dataset = ShardDataset(shards_dir, split, crop_size, train=False)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )


@torch.inference_mode()
def predict_probabilities(model: nn.Module, images: torch.Tensor, tta_flip: bool = False) -> torch.Tensor:
    """Return the class probabilities [B, C] of a batch of images [B, 3, H, W].

    With `tta_flip`, the softmax probabilities of each image and of its
    horizontal mirror are averaged. Both go through one forward pass; the model
    must be in eval mode so that batch normalisation does not mix them.
    """
    if not tta_flip:
        return torch.softmax(model(images).float(), dim=1)

    both = torch.cat([images, torch.flip(images, dims=[-1])])
    probabilities = torch.softmax(model(both).float(), dim=1)
    original, mirrored = probabilities.chunk(2)
    return (original + mirrored) / 2


def predict_split(
    model: nn.Module, loader: DataLoader, device: torch.device, tta_flip: bool, description: str,
) -> SplitPredictions:
    """Run the model over every batch of `loader` and collect probabilities and labels."""
    indices, labels, probabilities = [], [], []
    for batch in tqdm(loader, desc=description, unit="batch", disable=None):
        images = batch["image"].to(device, non_blocking=True)
        probabilities.append(predict_probabilities(model, images, tta_flip).cpu().numpy())
        labels.append(batch["label"].numpy())
        indices.append(batch["index"].numpy())

    indices = np.concatenate(indices).astype(np.int64)
    dataset_paths = loader.dataset.paths
    return SplitPredictions(
        indices=indices,
        paths=[dataset_paths[index] for index in indices],
        labels=np.concatenate(labels).astype(np.int64),
        probabilities=np.concatenate(probabilities).astype(np.float64),
    )


# ---------------------------------------------------------------------------
# Output files


def build_report(
    job: EvaluationJob,
    checkpoint: dict,
    metrics: ClassificationMetrics,
    shards_dir: Path,
    split: str,
    tta_flip: bool,
    device: torch.device,
) -> dict:
    """Collect the settings and metrics written to report.json."""
    return {
        "run": job.run_name,
        "checkpoint": str(job.checkpoint.resolve()),
        "variant": checkpoint["variant"],
        "se": checkpoint.get("se", VARIANTS[checkpoint["variant"]].se),
        "epoch": checkpoint.get("epoch"),
        "shards": str(Path(shards_dir).resolve()),
        "split": split,
        "crop_size": int(checkpoint["crop_size"]),
        "tta_flip": tta_flip,
        "tta_average": TTA_AVERAGE if tta_flip else None,
        "device": str(device),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "slfer_version": slfer_version(),
        **metrics.to_dict(),
    }


def slfer_version() -> str | None:
    try:
        return version("slfer")
    except PackageNotFoundError:
        return None


def write_outputs(
    out_dir: Path,
    report: dict,
    metrics: ClassificationMetrics,
    predictions: SplitPredictions,
    class_names: Sequence[str],
    title: str,
) -> None:
    """Write report.json, predictions.csv, confusion.csv and confusion.png into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions_csv(out_dir / PREDICTIONS_NAME, predictions, class_names)
    write_confusion_csv(out_dir / CONFUSION_CSV_NAME, metrics)
    plot_confusion(
        metrics.confusion, metrics.confusion_normalised, class_names, metrics.accuracy,
        out_dir / CONFUSION_PNG_NAME, title=title,
    )
    # report.json is written last, so a folder that contains it contains the other three files.
    write_text_atomic(out_dir / REPORT_NAME, json.dumps(report, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path` and rename it to `path`."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_rows_atomic(path: Path, header: Sequence[str], rows) -> None:
    """Write a CSV file through a temporary name."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(temporary, path)


def write_predictions_csv(path: Path, predictions: SplitPredictions, class_names: Sequence[str]) -> None:
    """Write one row per image: index, path, label and prediction as class names, then one probability per class."""
    header = ["index", "path", "label", "prediction", *(f"probability_{name}" for name in class_names)]
    rows = (
        [int(index), image_path, class_names[label], class_names[predicted], *(f"{value:.6f}" for value in row)]
        for index, image_path, label, predicted, row in zip(
            predictions.indices, predictions.paths, predictions.labels, predictions.predicted,
            predictions.probabilities,
        )
    )
    write_rows_atomic(path, header, rows)


def write_confusion_csv(path: Path, metrics: ClassificationMetrics) -> None:
    """Write one row per (true class, predicted class) pair: the count and the fraction of the true class."""
    rows = []
    for row, label in enumerate(metrics.class_names):
        for column, predicted in enumerate(metrics.class_names):
            count = int(metrics.confusion[row, column])
            fraction = float(metrics.confusion_normalised[row, column])
            rows.append([label, predicted, count, f"{fraction:.6f}"])
    write_rows_atomic(path, ["label", "prediction", "count", "fraction_of_label"], rows)


# ---------------------------------------------------------------------------
# Tables


def format_report_table(report: dict) -> str:
    """Lay out one report as text: accuracies, per-class scores and confusion counts."""
    class_names = report["class_names"]
    width = max(len(name) for name in class_names) + 2
    tta = f"flip TTA on ({report['tta_average']} averaged)" if report["tta_flip"] else "flip TTA off"
    lines = [
        f"{report['run']} ({variant_label(report['variant'], report.get('se'))}) on split {report['split']}: "
        f"{count_noun(report['num_samples'], 'image')}, {tta}",
        f"  accuracy             {report['accuracy'] * 100:6.2f}%",
        f"  mean class accuracy  {report['mean_class_accuracy'] * 100:6.2f}%",
        "",
        f"  {'class':<{width}}{'precision %':>13}{'recall %':>10}{'f1 %':>8}{'support':>9}",
    ]
    for name in class_names:
        scores = report["per_class"][name]
        lines.append(
            f"  {name:<{width}}{scores['precision'] * 100:>13.2f}{scores['recall'] * 100:>10.2f}"
            f"{scores['f1'] * 100:>8.2f}{scores['support']:>9d}"
        )
    if report["classes_without_samples"]:
        lines.append(f"  no samples of: {', '.join(report['classes_without_samples'])} (recall and row set to 0)")

    lines += ["", "  confusion counts (rows: true class, columns: predicted class)"]
    column_width = max(width, 9)
    lines.append("  " + " " * width + "".join(f"{name:>{column_width}}" for name in class_names))
    for name, counts in zip(class_names, report["confusion"]):
        lines.append(f"  {name:<{width}}" + "".join(f"{count:>{column_width}d}" for count in counts))
    return "\n".join(lines)
