"""The embedded default streams, from scikit-learn's bundled 8×8 digits: no files, no network, seconds to run.

1,797 images of 64 pixels (values 0..16, scaled to [0, 1]) over 10 classes. A fixed 25% test split, the
same for every seed, so that seeds vary training only; a seeded validation split per task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch
from torch import Tensor

from ..data import Task, TaskStream, split_train_valid

NUM_TASKS = 5


def _digits() -> Tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixel values 0..16
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y


def _digits_test_split(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """A fixed 25% test split: the same for every seed, so that seeds vary training only."""
    generator = torch.Generator().manual_seed(12345)
    order = torch.randperm(len(y), generator=generator)
    n_test = len(y) // 4
    test, rest = order[:n_test], order[n_test:]
    return x[rest], y[rest], x[test], y[test]


def permuted_digits(data_root: Path, seed: int, valid_fraction: float, download: bool = False,
                    num_tasks: int = NUM_TASKS) -> TaskStream:
    """5 tasks of 10-way digits; task 0 unpermuted, each later task a seeded pixel permutation."""
    x, y = _digits()
    x_rest, y_rest, x_test, y_test = _digits_test_split(x, y)
    permutation_rng = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(num_tasks):
        perm = torch.arange(x.shape[1]) if t == 0 else torch.randperm(x.shape[1], generator=permutation_rng)
        xtr, ytr, xva, yva = split_train_valid(x_rest[:, perm], y_rest, valid_fraction, seed + t)
        tasks.append(Task(f"permutation {t}", 10, xtr, ytr, xva, yva, x_test[:, perm], y_test))
    return TaskStream("permuted_digits", tasks, (x.shape[1],), "mlp")


def split_digits(data_root: Path, seed: int, valid_fraction: float, download: bool = False) -> TaskStream:
    """5 tasks of 2-way digits: {0,1}, {2,3}, ..., {8,9}; labels 0/1 within each task."""
    x, y = _digits()
    x_rest, y_rest, x_test, y_test = _digits_test_split(x, y)
    tasks = []
    for t in range(NUM_TASKS):
        keep, keep_test = (y_rest // 2) == t, (y_test // 2) == t
        xtr, ytr, xva, yva = split_train_valid(x_rest[keep], y_rest[keep] - 2 * t, valid_fraction, seed + t)
        tasks.append(Task(f"digits {2 * t}/{2 * t + 1}", 2, xtr, ytr, xva, yva, x_test[keep_test],
                          y_test[keep_test] - 2 * t))
    return TaskStream("split_digits", tasks, (x.shape[1],), "mlp")
