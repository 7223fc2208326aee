"""A template for your own benchmark: rotated digits, a task stream built from data scikit-learn ships.

Run from this folder (the working directory is importable, as with any ``python -m``):

    python -m ness_sweep.train benchmark=my_benchmark:rotated_digits
    python -m ness_sweep.train benchmark=my_benchmark:rotated_digits model=my_model:build

A benchmark is any function ``loader(data_root, seed, valid_fraction, download) -> TaskStream``; it is
called once per seed, and what it returns is checked before any training.
"""

from pathlib import Path

import torch
from sklearn.datasets import load_digits

from ness_sweep.data import Task, TaskStream, split_train_valid

ANGLES = (0, 90, 180, 270)  # one task per rotation, each the same 10 classes


def rotated_digits(data_root: Path, seed: int, valid_fraction: float, download: bool) -> TaskStream:
    # data_root and download are for loaders that read or fetch files; bundled data needs neither.
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8, in [0, 1]
    labels = torch.tensor(digits.target, dtype=torch.long)  # int64, 0 .. num_classes - 1

    # One test split for every seed, so that seeds vary training, not what is measured.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    test, rest = order[:len(order) // 4], order[len(order) // 4:]

    tasks = []
    for t, angle in enumerate(ANGLES):
        def rotate(x):
            return torch.rot90(x, k=angle // 90, dims=(2, 3))

        # A validation split drawn from the run's seed (train.valid_fraction), different for each task.
        x_train, y_train, x_valid, y_valid = split_train_valid(rotate(images[rest]), labels[rest], valid_fraction,
                                                               seed + t)
        tasks.append(Task(f"rotated {angle}", 10, x_train, y_train, x_valid, y_valid,
                          rotate(images[test]), labels[test]))

    # input_shape: one sample's shape. default_model: what model=auto builds (a name or an import path).
    # meta: anything worth keeping with the stream.
    return TaskStream("rotated_digits", tasks, input_shape=(1, 8, 8), default_model="mlp",
                      meta={"angles": list(ANGLES)})
