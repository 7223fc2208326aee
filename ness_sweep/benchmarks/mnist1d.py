"""MNIST-1D task streams, generated on this machine by the ``mnist1d`` package: no download, ever.

Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024. The package's generator with
the paper's arguments (``MNIST1D_ARGS``) builds 4,000 training and 1,000 test signals of length 40 over
10 classes in a few seconds. The arrays are cached as ``data_root/mnist1d/<hash>.npz``, the hash taken
over the arguments and the package version; the file also stores them, and it is used only when they
are the ones asked for, so a cache can never stand in for data made differently.

- ``permuted_mnist1d``: 5 × 10-way; task 0 the original signals, each later task a seeded permutation of
  the 40 positions (which destroys the locality a convolution relies on).
- ``split_mnist1d``: 5 × 2-way: classes {0,1}, {2,3}, ..., {8,9}, labels 0/1 within each task.

Splits as for the digits: the generator's own test set, the same for every seed, and a seeded
validation split per task. Signals are N×1×40 float32 (one channel, for ``nn.Conv1d``), already
standardised by the generator.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np
import torch
from torch import Tensor

from ..config import UserError, first_line
from ..data import Task, TaskStream, split_train_valid
from .files import expect

# mnist1d's get_dataset_args() defaults (the paper's data set), written out so that a change of the
# package's defaults cannot silently change the benchmark; its 'url' is for downloading and is never used.
MNIST1D_ARGS = {"num_samples": 5000, "train_split": 0.8, "template_len": 12, "padding": [36, 60],
                "scale_coeff": 0.4, "max_translation": 48, "corr_noise_scale": 0.25, "iid_noise_scale": 2e-2,
                "shear_scale": 0.75, "shuffle_seq": False, "final_seq_length": 40, "seed": 42}
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
NUM_CLASSES = 10
NUM_TASKS = 5

Split = Tuple[Tensor, Tensor, Tensor, Tensor]  # x_train, y_train, x_test, y_test


def generator_id(args: Dict[str, object]) -> str:
    """What decides the arrays: the generator's arguments and the package version, as canonical JSON."""
    return json.dumps({"args": args, "mnist1d": version("mnist1d")}, sort_keys=True)


def cache_path(data_root: Path, made_by: str) -> Path:
    return data_root / "mnist1d" / f"{hashlib.sha256(made_by.encode()).hexdigest()[:16]}.npz"


@contextmanager
def global_generators_kept() -> Iterator[None]:
    """make_dataset reseeds Python's and numpy's global generators; put them back, so that whether the
    cache existed never changes what a run draws afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def generate(args: Dict[str, object]) -> Dict[str, np.ndarray]:
    """The four arrays from the package's own generator (never its download path)."""
    from mnist1d.data import make_dataset  # imports matplotlib: only when generating
    from mnist1d.utils import ObjectView

    with global_generators_kept():
        data = make_dataset(ObjectView(json.loads(json.dumps(args))))  # a copy: the generator gets its own lists
    return {"x_train": data["x"].astype(np.float32), "y_train": data["y"].astype(np.int64),
            "x_test": data["x_test"].astype(np.float32), "y_test": data["y_test"].astype(np.int64)}


def write_cache(path: Path, arrays: Dict[str, np.ndarray], made_by: str) -> None:
    """Written to a temporary file and renamed into place: concurrent runs never read half a file."""
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as f:
            np.savez(f, made_by=np.array(made_by), **arrays)
        os.replace(temporary, path)
    except OSError as error:
        if temporary.exists():  # False, not an error, when data_root/mnist1d could not be made
            temporary.unlink()
        raise UserError(f"{path}: cannot write the MNIST-1D cache ({first_line(error, with_type=True)}); "
                          f"data_root must be a writable folder") from None


def check_arrays(arrays: Dict[str, np.ndarray], length: int) -> None:
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        expect(x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == length,
               f"x_{part} is {x.dtype} {x.shape}, not float32 N x {length}")
        expect(bool(np.isfinite(x).all()), f"x_{part} holds NaN or infinite values")
        expect(y.dtype == np.int64 and y.shape == (len(x),), f"y_{part} is {y.dtype} {y.shape}, not int64 ({len(x)},)")
        expect(len(y) > 0 and 0 <= y.min() and y.max() < NUM_CLASSES,
               f"y_{part} has labels outside 0..{NUM_CLASSES - 1}")


def generator_settings(made_by: str) -> Dict[str, object]:
    record = json.loads(made_by)
    return {**record["args"], "mnist1d version": record["mnist1d"]}


def mismatch(stored: str, made_by: str) -> str:
    """The settings a cache was made with that differ from those asked for, as key=value: short enough to read."""
    try:
        made, wanted = generator_settings(stored), generator_settings(made_by)
    except (ValueError, KeyError, TypeError):
        return f"made by {stored[:80]!r}, which names no generator settings"
    differ = sorted(key for key in {**made, **wanted} if made.get(key) != wanted.get(key))
    return (f"made with {', '.join(f'{k}={made.get(k)}' for k in differ)} "
            f"instead of {', '.join(f'{k}={wanted.get(k)}' for k in differ)}")


def read_cache(path: Path, made_by: str, length: int) -> Dict[str, np.ndarray]:
    """The cached arrays, refused unless the file says it was made by exactly ``made_by``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = str(f["made_by"])
            expect(stored == made_by, mismatch(stored, made_by))
            arrays = {name: f[name] for name in ARRAYS}
        check_arrays(arrays, length)
    except Exception as error:  # truncated zip, missing key, wrong arguments, dtype or shape
        raise UserError(f"{path}: not a valid MNIST-1D cache ({first_line(error, with_type=True)}); delete it and "
                        "the next run regenerates it with the mnist1d generator") from None
    return arrays


def load_mnist1d(data_root: Path, args: Dict[str, object] = MNIST1D_ARGS) -> Split:
    """Training and test signals as N×1×L float32 tensors with int64 labels; generated once per data_root."""
    made_by = generator_id(args)
    path = cache_path(data_root, made_by)
    if not path.exists():
        write_cache(path, generate(args), made_by)
    arrays = read_cache(path, made_by, int(args["final_seq_length"]))
    x_train, y_train, x_test, y_test = (torch.from_numpy(arrays[name]) for name in ARRAYS)
    return x_train.unsqueeze(1), y_train, x_test.unsqueeze(1), y_test


def permuted_mnist1d(data_root: Path, seed: int, valid_fraction: float, download: bool = False,
                     num_tasks: int = NUM_TASKS) -> TaskStream:
    """5 tasks of 10-way MNIST-1D; task 0 unpermuted, each later task a seeded permutation of the positions."""
    x_rest, y_rest, x_test, y_test = load_mnist1d(data_root)
    length = x_rest.shape[-1]
    permutation_rng = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(num_tasks):
        perm = torch.arange(length) if t == 0 else torch.randperm(length, generator=permutation_rng)
        xtr, ytr, xva, yva = split_train_valid(x_rest[..., perm], y_rest, valid_fraction, seed + t)
        tasks.append(Task(f"permutation {t}", NUM_CLASSES, xtr, ytr, xva, yva, x_test[..., perm], y_test))
    return TaskStream("permuted_mnist1d", tasks, (1, length), "mlp")


def split_mnist1d(data_root: Path, seed: int, valid_fraction: float, download: bool = False) -> TaskStream:
    """5 tasks of 2-way MNIST-1D: classes {0,1}, {2,3}, ..., {8,9}; labels 0/1 within each task."""
    x_rest, y_rest, x_test, y_test = load_mnist1d(data_root)
    tasks = []
    for t in range(NUM_TASKS):
        keep, keep_test = (y_rest // 2) == t, (y_test // 2) == t
        xtr, ytr, xva, yva = split_train_valid(x_rest[keep], y_rest[keep] - 2 * t, valid_fraction, seed + t)
        tasks.append(Task(f"classes {2 * t}/{2 * t + 1}", 2, xtr, ytr, xva, yva, x_test[keep_test],
                          y_test[keep_test] - 2 * t))
    return TaskStream("split_mnist1d", tasks, (1, x_rest.shape[-1]), "cnn1d")
