"""Continual-learning metrics on hand-computed matrices."""
from __future__ import annotations

import pytest

from clserver.training import metrics

R = [[0.9, 0.1, 0.0],
     [0.5, 0.8, 0.2],
     [0.4, 0.6, 0.9]]
b = [0.1, 0.1, 0.1]


def test_final_accuracy_is_the_mean_of_the_last_row():
    assert metrics.final_accuracy(R) == pytest.approx((0.4 + 0.6 + 0.9) / 3)


def test_backward_transfer():
    assert metrics.backward_transfer(R) == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)


def test_forgetting_uses_the_best_earlier_accuracy():
    assert metrics.forgetting(R) == pytest.approx(((0.9 - 0.4) + (0.8 - 0.6)) / 2)


def test_forward_transfer_against_the_initial_model():
    assert metrics.forward_transfer(R, b) == pytest.approx(((0.1 - 0.1) + (0.2 - 0.1)) / 2)


def test_single_experience_has_no_transfer():
    assert metrics.backward_transfer([[0.7]]) == 0.0
    assert metrics.forgetting([[0.7]]) == 0.0
    assert metrics.forward_transfer([[0.7]], [0.1]) == 0.0


def test_stream_accuracy_weights_by_test_size():
    assert metrics.stream_accuracy([1.0, 0.0], [30, 10]) == pytest.approx(0.75)
