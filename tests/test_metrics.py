"""Metrics of slfer_model.metrics checked against scikit-learn on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from pipeline.labels import CLASS_NAMES
from slfer_model.metrics import classification_metrics, confusion_matrix, normalise_rows

# Seven classes. Class 1 (disgust) has no sample and is predicted once, and
# class 4 (sad) has samples but is never predicted.
LABELS = np.array([0, 0, 0, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 6])
PREDICTIONS = np.array([0, 2, 0, 2, 1, 3, 3, 6, 3, 0, 6, 5, 3, 6, 6, 0])
ALL_CLASSES = list(range(len(CLASS_NAMES)))


@pytest.fixture(scope="module")
def scores():
    return classification_metrics(LABELS, PREDICTIONS, CLASS_NAMES)


def test_fixture_covers_edge_cases():
    assert 1 not in LABELS
    assert 4 not in PREDICTIONS


def test_accuracy_matches_sklearn(scores):
    assert scores.accuracy == pytest.approx(sk.accuracy_score(LABELS, PREDICTIONS))


def test_mean_class_accuracy_matches_sklearn(scores):
    with pytest.warns(UserWarning):  # scikit-learn warns that class 1 is predicted but absent
        expected = sk.balanced_accuracy_score(LABELS, PREDICTIONS)
    assert scores.mean_class_accuracy == pytest.approx(expected)


def test_per_class_scores_match_sklearn(scores):
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        LABELS, PREDICTIONS, labels=ALL_CLASSES, zero_division=0,
    )
    np.testing.assert_allclose(scores.precision, precision)
    np.testing.assert_allclose(scores.recall, recall)
    np.testing.assert_allclose(scores.f1, f1)
    np.testing.assert_array_equal(scores.support, support)


def test_confusion_matches_sklearn(scores):
    expected = sk.confusion_matrix(LABELS, PREDICTIONS, labels=ALL_CLASSES)
    np.testing.assert_array_equal(scores.confusion, expected)


def test_normalised_confusion_matches_sklearn(scores):
    with np.errstate(invalid="ignore"):
        expected = sk.confusion_matrix(LABELS, PREDICTIONS, labels=ALL_CLASSES, normalize="true")
    expected = np.nan_to_num(expected, nan=0.0)
    np.testing.assert_allclose(scores.confusion_normalised, expected)


def test_class_without_samples_row_is_zero(scores):
    assert scores.confusion_normalised[1].tolist() == [0.0] * len(CLASS_NAMES)
    assert scores.classes_without_samples == ["disgust"]


def test_never_predicted_class_scores_zero(scores):
    assert scores.precision[4] == 0.0
    assert scores.f1[4] == 0.0


def test_report_dict_holds_plain_numbers(scores):
    report = scores.to_dict()
    assert report["num_samples"] == len(LABELS)
    assert report["per_class"]["happy"]["support"] == 4
    assert type(report["confusion"][0][0]) is int


def test_normalise_rows_sums_to_one():
    rows = normalise_rows(np.array([[1, 3], [0, 0], [2, 2]]))
    assert rows.tolist() == [[0.25, 0.75], [0.0, 0.0], [0.5, 0.5]]


def test_confusion_rejects_index_outside_classes():
    with pytest.raises(ValueError, match="prediction 7 is outside"):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]), num_classes=7)


def test_confusion_rejects_length_mismatch():
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        confusion_matrix(np.array([0, 1, 2]), np.array([0, 1]), num_classes=7)


def test_no_samples_rejected():
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics(np.array([], dtype=int), np.array([], dtype=int), CLASS_NAMES)
