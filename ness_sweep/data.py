"""Task streams: every task's train / validation / test tensors, loaded once.

A stream is a list of ``Task`` objects. Inputs may be stored as uint8 to save memory; ``Task.inputs``
turns a batch into normalised float32 on the device, so normalisation happens per batch, never on the
whole data set at once. Batches are drawn by index (``batches``), never through a DataLoader.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .config import UserError


@dataclass
class Task:
    name: str
    num_classes: int
    x_train: Tensor
    y_train: Tensor
    x_valid: Tensor
    y_valid: Tensor
    x_test: Tensor
    y_test: Tensor
    mean: Optional[Tensor] = None  # per channel, applied to uint8 inputs scaled to [0, 1]
    std: Optional[Tensor] = None

    def inputs(self, x: Tensor) -> Tensor:
        """A batch of stored inputs as normalised float32."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.mean is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x = (x - self.mean.to(x.device).view(shape)) / self.std.to(x.device).view(shape)
        return x

    def to(self, device: torch.device) -> "Task":
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return Task(**moved)


@dataclass
class TaskStream:
    name: str
    tasks: List[Task]
    input_shape: Tuple[int, ...]
    default_model: str
    meta: Dict[str, object] = field(default_factory=dict)

    def to(self, device: torch.device) -> "TaskStream":
        return TaskStream(self.name, [t.to(device) for t in self.tasks], self.input_shape, self.default_model, self.meta)


def batches(n: int, batch_size: int, generator: Optional[torch.Generator] = None) -> Iterator[Tensor]:
    """Index batches over ``n`` samples; shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def split_train_valid(x: Tensor, y: Tensor, valid_fraction: float, seed: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded, disjoint train / validation split (at least one sample on each side)."""
    n = len(y)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_valid = min(max(1, int(round(valid_fraction * n))), n - 1)
    valid, train = order[:n_valid], order[n_valid:]
    return x[train], y[train], x[valid], y[valid]


def _digits() -> Tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixel values 0..16
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y


def _digits_test_split(x: Tensor, y: Tensor, seed: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """A fixed 25% test split: the same for every seed, so that seeds vary training only."""
    del seed
    generator = torch.Generator().manual_seed(12345)
    order = torch.randperm(len(y), generator=generator)
    n_test = len(y) // 4
    test, rest = order[:n_test], order[n_test:]
    return x[rest], y[rest], x[test], y[test]


def permuted_digits(data_root: Path, seed: int, valid_fraction: float, num_tasks: int = 5,
                    download: bool = False) -> TaskStream:
    """5 tasks of 10-way digits; task 0 unpermuted, each later task a seeded pixel permutation."""
    x, y = _digits()
    x_rest, y_rest, x_test, y_test = _digits_test_split(x, y, seed)
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
    x_rest, y_rest, x_test, y_test = _digits_test_split(x, y, seed)
    tasks = []
    for t in range(5):
        keep, keep_test = (y_rest // 2) == t, (y_test // 2) == t
        xtr, ytr, xva, yva = split_train_valid(x_rest[keep], y_rest[keep] - 2 * t, valid_fraction, seed + t)
        tasks.append(Task(f"digits {2 * t}/{2 * t + 1}", 2, xtr, ytr, xva, yva, x_test[keep_test], y_test[keep_test] - 2 * t))
    return TaskStream("split_digits", tasks, (x.shape[1],), "mlp")


LOADERS: Dict[str, Callable[..., TaskStream]] = {
    "permuted_digits": permuted_digits,
    "split_digits": split_digits,
}


def register(name: str) -> Callable:
    """Decorator adding a stream loader ``fn(data_root, seed, valid_fraction, download=...) -> TaskStream``.

    ``download`` allows fetching missing files; loaders of bundled data (the digits) ignore it.
    """

    def add(fn: Callable[..., TaskStream]) -> Callable[..., TaskStream]:
        LOADERS[name] = fn
        return fn

    return add


def load_stream(benchmark: str, data_root: str, seed: int, valid_fraction: float, task_order: str = "fixed",
                download: bool = False) -> TaskStream:
    """The benchmark's tasks, in the paper's order or (``task_order=seeded``) shuffled by the seed;
    with ``download``, missing files that torchvision can fetch are downloaded first. The stream is
    stamped with the settings that shaped it (``meta["settings"]``), which ``check_stream`` compares."""
    if benchmark not in LOADERS:
        from . import mnist1d, paper_benchmarks  # noqa: F401  (register the generated and file-based benchmarks)
    if benchmark not in LOADERS:
        raise UserError(f"benchmark={benchmark}: must be one of {', '.join(sorted(LOADERS))}")
    stream = LOADERS[benchmark](Path(data_root).expanduser(), seed, valid_fraction, download=download)
    if task_order == "seeded":
        order = list(range(len(stream.tasks)))
        random.Random(seed).shuffle(order)
        stream.tasks = [stream.tasks[i] for i in order]
    stream.meta["settings"] = {"benchmark": benchmark, "data_root": data_root, "download": download, "seed": seed,
                               "train.valid_fraction": valid_fraction, "task_order": task_order}
    return stream


# The run settings that decide which stream a run trains on: a sweep loads one stream per distinct value.
STREAM_KEYS = ("benchmark", "data_root", "download", "seed", "train.valid_fraction", "task_order")


def stream_settings(cfg, seed: int) -> Dict[str, object]:
    """The stream-shaping settings of a run config with the given seed (``STREAM_KEYS``)."""
    return {"benchmark": cfg.benchmark, "data_root": cfg.data_root, "download": cfg.download, "seed": seed,
            "train.valid_fraction": cfg.train.valid_fraction, "task_order": cfg.task_order}


def stream_for(cfg, seed: int) -> TaskStream:
    """The stream a run config asks for, with the given seed (the seed shapes splits and orders)."""
    s = stream_settings(cfg, seed)
    return load_stream(s["benchmark"], s["data_root"], seed, s["train.valid_fraction"], s["task_order"], s["download"])


def check_stream(stream: TaskStream, cfg, seed: int) -> None:
    """Refuse to train on a stream that the run's settings do not describe: its record would be false."""
    wanted, made = stream_settings(cfg, seed), stream.meta.get("settings")
    if made != wanted:
        differ = sorted(k for k in wanted if (made or {}).get(k, object()) != wanted[k])
        raise RuntimeError(f"stream mismatch: the run's settings ask for {', '.join(f'{k}={wanted[k]}' for k in differ)}"
                           f" but the stream was made with {made}; refusing to train")


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (CPU and CUDA) generators, first thing in every run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
