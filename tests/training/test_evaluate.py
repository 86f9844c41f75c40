"""Metrics on a hand-made case whose values are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dermbatch.model.contract import HAM10000_CLASSES
from dermbatch.training.evaluate import (
    CONFUSION_MATRIX_PNG, ROC_CURVES_PNG, balanced_accuracy, evaluate_arrays, expected_calibration_error, write_plots,
)

MEL = HAM10000_CLASSES.index("mel")
NV = HAM10000_CLASSES.index("nv")
BCC = HAM10000_CLASSES.index("bcc")


def _one_hot_probabilities(predicted: list[int], confidence: float) -> np.ndarray:
    probabilities = np.full((len(predicted), 7), (1 - confidence) / 6)
    probabilities[np.arange(len(predicted)), predicted] = confidence
    return probabilities


@pytest.fixture()
def case():
    # 4 mel (3 found, 1 called nv), 4 nv (3 right, 1 called mel), 2 bcc (both right).
    labels = np.array([MEL, MEL, MEL, MEL, NV, NV, NV, NV, BCC, BCC])
    predicted = [MEL, MEL, MEL, NV, NV, NV, NV, MEL, BCC, BCC]
    return labels, _one_hot_probabilities(predicted, 0.9)


def test_accuracy_and_balanced_accuracy(case):
    labels, probabilities = case

    metrics = evaluate_arrays(labels, probabilities, HAM10000_CLASSES)

    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["balanced_accuracy"] == pytest.approx((0.75 + 0.75 + 1.0) / 3)
    assert metrics["n_images"] == 10


def test_per_class_precision_recall_and_support(case):
    labels, probabilities = case

    per_class = evaluate_arrays(labels, probabilities, HAM10000_CLASSES)["per_class"]

    assert per_class["mel"]["precision"] == pytest.approx(0.75)
    assert per_class["mel"]["recall"] == pytest.approx(0.75)
    assert per_class["bcc"]["precision"] == pytest.approx(1.0)
    assert per_class["bcc"]["support"] == 2
    assert per_class["df"]["support"] == 0
    assert per_class["df"]["recall"] is None
    assert per_class["df"]["auc"] is None


def test_melanoma_sensitivity_and_specificity(case):
    labels, probabilities = case

    melanoma = evaluate_arrays(labels, probabilities, HAM10000_CLASSES)["melanoma"]

    assert melanoma["sensitivity"] == pytest.approx(3 / 4)
    assert melanoma["specificity"] == pytest.approx(5 / 6)


def test_auc_of_perfect_ranking_is_one():
    labels = np.array([MEL, NV, NV, BCC])
    probabilities = _one_hot_probabilities([MEL, NV, NV, BCC], 0.7)

    metrics = evaluate_arrays(labels, probabilities, HAM10000_CLASSES)

    assert metrics["macro_auc"] == pytest.approx(1.0)
    assert metrics["per_class"]["mel"]["auc"] == pytest.approx(1.0)


def test_expected_calibration_error_by_hand(case):
    labels, probabilities = case

    # Every prediction has confidence 0.9 and 8 of 10 are right: |0.8 - 0.9| in one bin.
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.1)
    assert evaluate_arrays(labels, probabilities, HAM10000_CLASSES)["ece"] == pytest.approx(0.1)


def test_balanced_accuracy_ignores_absent_classes():
    labels = np.array([0, 0, 1, 1])
    predicted = np.array([0, 1, 1, 1])

    assert balanced_accuracy(labels, predicted, classes=7) == pytest.approx(0.75)


def test_confusion_matrix_rows_are_true_classes(case):
    labels, probabilities = case

    matrix = np.array(evaluate_arrays(labels, probabilities, HAM10000_CLASSES)["confusion_matrix"]["rows_true_columns_predicted"])

    assert matrix[MEL, NV] == 1
    assert matrix[NV, MEL] == 1
    assert matrix.sum() == 10


def test_write_plots_creates_pngs(case, tmp_path):
    labels, probabilities = case

    paths = write_plots(labels, probabilities, HAM10000_CLASSES, tmp_path)

    assert [path.name for path in paths] == [CONFUSION_MATRIX_PNG, ROC_CURVES_PNG]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
