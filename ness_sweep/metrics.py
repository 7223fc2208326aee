"""Continual-learning metrics as pure functions of the accuracy matrix.

``R[i][j]`` is the accuracy (%) on task j after training task i (j ≤ i); entries above the diagonal
are ignored (they may be None). T = len(R). A run keeps two such matrices: on each task's test split and on
its validation split (held out of its training data); a sweep selects on the second and reports the first.
"""

from __future__ import annotations

import statistics
from typing import Dict, Optional, Sequence

Matrix = Sequence[Sequence[Optional[float]]]

TEST, VALID = "test", "valid"  # the splits a run is evaluated on after every task
NATURAL_MODE = {"acc": "max", "bwt": "max", "forgetting": "min"}  # a run's final metrics and which way is better
FINAL = tuple(NATURAL_MODE)  # each a function of its accuracy matrix


def on_split(metric: str, split: str) -> str:
    """A metric's name on a split: ``acc`` on test, ``valid_acc`` on validation (``acc_seen``, ``acc_matrix`` too)."""
    return metric if split == TEST else f"{split}_{metric}"


def final_metrics(R: Matrix, split: str = TEST) -> Dict[str, float]:
    """ACC, BWT and forgetting of one matrix, named for its split (``on_split``)."""
    values = (average_accuracy(R), backward_transfer(R), forgetting(R))
    return {on_split(metric, split): value for metric, value in zip(FINAL, values)}


def average_accuracy(R: Matrix) -> float:
    """``ACC = 1/T Σ_j R[T-1][j]``.

    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017.
    """
    T = len(R)
    return sum(R[T - 1][j] for j in range(T)) / T


def backward_transfer(R: Matrix) -> float:
    """``BWT = 1/(T-1) Σ_{j<T-1} (R[T-1][j] − R[j][j])``; negative means forgetting, 0 for one task.

    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017.
    """
    T = len(R)
    if T < 2:
        return 0.0
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forgetting(R: Matrix) -> float:
    """``F = 1/(T-1) Σ_{j<T-1} max_{i<T-1} (R[i][j] − R[T-1][j])``, the drop from each task's best.

    Chaudhry, Dokania, Ajanthan, Torr, "Riemannian Walk for Incremental Learning", ECCV 2018.
    """
    T = len(R)
    if T < 2:
        return 0.0
    return sum(max(R[i][j] for i in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)) / (T - 1)


def seen_accuracy(row: Sequence[float]) -> float:
    """Mean accuracy over the tasks seen so far: the per-task signal early stopping watches."""
    return sum(row) / len(row)


def mean_std(values: Sequence[float]) -> tuple:
    """Mean and sample standard deviation (0 for a single value) of one metric over seeds."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)
