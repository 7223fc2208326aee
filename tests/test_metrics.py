"""Metrics against values computed by hand from the definitions."""

import pytest

from ness_sweep.metrics import average_accuracy, backward_transfer, forgetting, seen_accuracy

# Task 0 peaks after task 1 (95) and then drops, so forgetting (from the best) ≠ −BWT (from the first).
R = [
    [90.0, None, None],
    [95.0, 80.0, None],
    [85.0, 70.0, 60.0],
]


def test_acc_is_mean_of_last_row():
    assert average_accuracy(R) == pytest.approx((85 + 70 + 60) / 3)


def test_bwt_compares_last_row_with_diagonal():
    assert backward_transfer(R) == pytest.approx(((85 - 90) + (70 - 80)) / 2)  # −7.5


def test_forgetting_compares_last_row_with_best_earlier_accuracy():
    assert forgetting(R) == pytest.approx(((95 - 85) + (80 - 70)) / 2)  # 10


def test_no_forgetting_and_single_task():
    perfect = [[100.0, None], [100.0, 100.0]]
    assert backward_transfer(perfect) == 0 and forgetting(perfect) == 0 and average_accuracy(perfect) == 100
    assert backward_transfer([[70.0]]) == 0 and forgetting([[70.0]]) == 0 and average_accuracy([[70.0]]) == 70


def test_positive_backward_transfer():
    improved = [[50.0, None], [60.0, 80.0]]
    assert backward_transfer(improved) == 10
    assert forgetting(improved) == -10


def test_seen_accuracy():
    assert seen_accuracy([90.0, 80.0]) == 85
