"""Evaluation figures drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

# Figure size in inches and resolution; the PNG is FIGURE_INCHES * DPI pixels.
FIGURE_INCHES = (8.0, 7.0)
DPI = 100


def plot_confusion(
    confusion: np.ndarray,
    confusion_normalised: np.ndarray,
    class_names: Sequence[str],
    accuracy: float,
    path: Path,
    title: str | None = None,
) -> Path:
    """Draw the row-normalised confusion matrix with counts and write it as a PNG.

    Each cell shows the fraction of the true class (row) and the count. The PNG
    is written to a temporary name beside `path` and renamed.

    Args:
        confusion: int counts [C, C], rows are true classes.
        confusion_normalised: the same matrix divided by row sums, in 0..1.
        class_names: C names, used on both axes.
        accuracy: overall accuracy in 0..1, shown in the title.
        path: output PNG file; FIGURE_INCHES * DPI pixels.
        title: text put before the accuracy in the title.

    Returns:
        `path`.
    """
    path = Path(path)
    figure, axes = plt.subplots(figsize=FIGURE_INCHES, dpi=DPI)
    try:
        draw_matrix(axes, confusion, confusion_normalised, class_names)
        heading = f"accuracy {accuracy * 100:.2f}%"
        axes.set_title(f"{title}\n{heading}" if title else heading)
        figure.tight_layout()

        temporary = path.with_name(f".{path.name}.tmp")
        figure.savefig(temporary, format="png", dpi=DPI)
        os.replace(temporary, path)
    finally:
        plt.close(figure)
    return path


def draw_matrix(axes, confusion: np.ndarray, confusion_normalised: np.ndarray, class_names: Sequence[str]) -> None:
    """Draw the normalised matrix as an image with 'fraction (count)' in every cell."""
    image = axes.imshow(confusion_normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    axes.figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)

    # Each true class carries its sample count, so an all-zero row reads as "no samples".
    support = confusion.sum(axis=1)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, labels=[f"{name}\n(n={count})" for name, count in zip(class_names, support)])
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")

    for row in range(confusion.shape[0]):
        for column in range(confusion.shape[1]):
            fraction = confusion_normalised[row, column]
            colour = "white" if fraction > 0.5 else "black"
            axes.text(
                column, row, f"{fraction:.2f}\n({confusion[row, column]})",
                ha="center", va="center", color=colour, fontsize=8,
            )
