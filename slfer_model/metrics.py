"""Classification metrics of expression predictions, computed with numpy.

The definitions follow scikit-learn with `zero_division=0`: a precision,
recall or F1 whose denominator is zero is 0. scikit-learn is only used by the
tests that check these functions against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassificationMetrics:
    """Scores of one set of predictions over `class_names`.

    Per-class arrays are indexed by class. `confusion` has true classes as rows
    and predicted classes as columns. `confusion_normalised` divides each row by
    its support, and its row for a class with no samples is all zeros.
    """

    class_names: tuple[str, ...]
    accuracy: float
    mean_class_accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray
    confusion_normalised: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.support.sum())

    @property
    def classes_without_samples(self) -> list[str]:
        """Names of the classes that have no sample, so their recall and row are 0."""
        return [name for name, count in zip(self.class_names, self.support) if count == 0]

    def to_dict(self) -> dict:
        """Return the metrics as plain Python numbers and lists, ready for JSON."""
        per_class = {
            name: {
                "precision": float(self.precision[index]),
                "recall": float(self.recall[index]),
                "f1": float(self.f1[index]),
                "support": int(self.support[index]),
            }
            for index, name in enumerate(self.class_names)
        }
        return {
            "num_samples": self.num_samples,
            "accuracy": self.accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "class_names": list(self.class_names),
            "per_class": per_class,
            "confusion": self.confusion.tolist(),
            "confusion_normalised": self.confusion_normalised.tolist(),
            "classes_without_samples": self.classes_without_samples,
        }


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Count (true class, predicted class) pairs.

    Returns:
        int64 array [num_classes, num_classes], rows are true classes.

    Raises:
        ValueError: when the arrays differ in length or contain an index outside 0..num_classes-1.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions; pass one prediction per label")
    for name, values in (("label", labels), ("prediction", predictions)):
        outside = values[(values < 0) | (values >= num_classes)]
        if outside.size:
            raise ValueError(f"{name} {int(outside[0])} is outside the class indices 0..{num_classes - 1}")

    pair_index = labels * num_classes + predictions
    counts = np.bincount(pair_index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def normalise_rows(confusion: np.ndarray) -> np.ndarray:
    """Divide each row by its sum; a row that sums to 0 stays a row of zeros."""
    row_sums = confusion.sum(axis=1, keepdims=True)
    return np.divide(
        confusion, row_sums, out=np.zeros(confusion.shape, dtype=np.float64), where=row_sums > 0,
    )


def safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Divide element-wise, giving 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str],
) -> ClassificationMetrics:
    """Compute accuracy, mean class accuracy, per-class scores and the confusion matrix.

    Mean class accuracy (balanced accuracy) is the mean recall over the classes
    that have at least one sample, as scikit-learn's balanced_accuracy_score
    computes it. F1 is 2 TP / (2 TP + FP + FN), which equals the harmonic mean of
    precision and recall wherever that is defined.

    Raises:
        ValueError: when there are no samples, or as `confusion_matrix` does.
    """
    class_names = tuple(class_names)
    confusion = confusion_matrix(labels, predictions, len(class_names))
    if confusion.sum() == 0:
        raise ValueError("no samples to score; check that the evaluated split contains images")

    true_positives = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    recall = safe_divide(true_positives, support)

    return ClassificationMetrics(
        class_names=class_names,
        accuracy=float(true_positives.sum() / confusion.sum()),
        mean_class_accuracy=float(recall[support > 0].mean()),
        precision=safe_divide(true_positives, predicted),
        recall=recall,
        f1=safe_divide(2 * true_positives, support + predicted),
        support=support,
        confusion=confusion,
        confusion_normalised=normalise_rows(confusion),
    )
