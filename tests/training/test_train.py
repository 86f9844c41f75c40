"""Class weights and the output offsets tuned on validation."""

from __future__ import annotations

import numpy as np
import pytest

from dermbatch.training.train import class_weights, tune_class_bias


def test_class_weights_balance_fully_at_power_one():
    labels = np.array([0] * 8 + [1] * 2)

    weights = class_weights(labels, classes=2, power=1.0)

    assert weights[0] * 8 == pytest.approx(weights[1] * 2)
    assert weights[labels].mean() == pytest.approx(1.0)


def test_class_weights_absent_class_gets_zero():
    weights = class_weights(np.array([0, 0, 1]), classes=3, power=0.5)

    assert weights[2] == 0.0


def test_tune_class_bias_corrects_a_shifted_class():
    # Class 1 is always 0.2 below where it should be, so argmax misses every class-1 image.
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.7, 0.3], [0.8, 0.2], [0.55, 0.45], [0.6, 0.4]])

    offsets = tune_class_bias(labels, probabilities, classes=2)

    predicted = (np.log(probabilities) + offsets).argmax(axis=1)
    assert predicted.tolist() == [0, 0, 1, 1]


def test_tune_class_bias_meets_required_recall():
    # Reaching recall 1.0 on class 1 costs three class-0 errors, which the free search avoids.
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    class_1 = np.array([0.1, 0.1, 0.1, 0.35, 0.35, 0.35, 0.8, 0.3])
    probabilities = np.stack([1 - class_1, class_1], axis=1)

    free = tune_class_bias(labels, probabilities, classes=2)
    required = tune_class_bias(labels, probabilities, classes=2, min_recall={1: 1.0})

    free_predicted = (np.log(probabilities) + free).argmax(axis=1)
    required_predicted = (np.log(probabilities) + required).argmax(axis=1)
    assert (free_predicted[labels == 1] == 1).mean() == 0.5
    assert (required_predicted[labels == 1] == 1).all()
