"""The files of a training run folder besides checkpoints: config.yaml, metrics.csv, curves.png."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import yaml

METRIC_COLUMNS = (
    "epoch",
    "loss_total",
    "loss_expression",
    "loss_segmentation",
    "loss_parts",
    "train_accuracy",
    "val_accuracy",
    "val_mean_class_accuracy",
    "lr",
    "images_per_second",
    "data_wait_share",
    "seconds",
)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path` for writing, and rename it to `path` when the block ends.

    The file gets the permissions of a newly created file (0666 less the umask), not
    mkstemp's 0600. An exception inside the block removes the temporary file.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """Return the process umask (reading it requires setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    with atomic_file(path) as file:
        file.write(data)


def write_config(path: Path, settings: dict[str, Any]) -> None:
    """Write the resolved settings of a run as YAML."""
    write_atomic(path, yaml.safe_dump(settings, sort_keys=False).encode())


def read_metrics(path: Path, up_to_epoch: int) -> list[dict[str, str]]:
    """Read the rows of metrics.csv for epochs 1 .. `up_to_epoch`; a missing file gives none."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [row for row in csv.DictReader(file) if int(row["epoch"]) <= up_to_epoch]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write one row per epoch; a loss term of a head the variant lacks is left empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode())


def plot_curves(path: Path, rows: list[dict[str, Any]]) -> None:
    """Plot the loss terms and accuracies per epoch into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [int(row["epoch"]) for row in rows]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))

    for column in ("loss_total", "loss_expression", "loss_segmentation", "loss_parts"):
        plot_column(loss_axes, epochs, rows, column)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss")
    loss_axes.legend()

    for column in ("train_accuracy", "val_accuracy", "val_mean_class_accuracy"):
        plot_column(accuracy_axes, epochs, rows, column)
    accuracy_axes.set_xlabel("epoch")
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.set_ylim(0, 1)
    accuracy_axes.legend()

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


def plot_column(axes, epochs: list[int], rows: list[dict[str, Any]], column: str) -> None:
    """Plot one metrics column, skipping epochs where it is empty."""
    points = [(epoch, float(row[column])) for epoch, row in zip(epochs, rows) if row.get(column) not in (None, "")]
    if points:
        axes.plot(*zip(*points), marker="o", label=column)
