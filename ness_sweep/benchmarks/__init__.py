"""The benchmark registry: every task stream by name, and the settings that decide which stream a run trains on.

A benchmark is a loader ``fn(data_root: Path, seed: int, valid_fraction: float, download: bool) -> TaskStream``
(``download`` allows fetching missing files; loaders of bundled or generated data ignore it). The shipped
loaders are listed in ``BENCHMARKS``, one import per module, no directory scanning; the modules import only
the base types of ``ness_sweep.data`` and ``ness_sweep.config``. Any other benchmark is an import path
``module:function`` (``benchmark=my_pkg.streams:make_stream``) held to the same contract: ``check_benchmark``
resolves it before any work, and ``load_stream`` checks every stream a loader returns (``check_task_stream``:
types, shapes, label ranges, finite inputs, a normalisation that divides by no zero), the one place every
benchmark's data passes through before training.
"""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from ..config import UserError
from ..data import Task, TaskStream
from ..user_code import resolve
from . import digits, mnist1d, paper

Loader = Callable[[Path, int, float, bool], TaskStream]

BENCHMARKS: Dict[str, Loader] = {
    "permuted_digits": digits.permuted_digits,
    "split_digits": digits.split_digits,
    "permuted_mnist1d": mnist1d.permuted_mnist1d,
    "split_mnist1d": mnist1d.split_mnist1d,
    "split_cifar100": paper.split_cifar100,
    "five_datasets": paper.five_datasets,
    "split_miniimagenet": paper.split_miniimagenet,
}
LOADER_PARAMS = ("data_root", "seed", "valid_fraction", "download")

# The run settings that decide which stream a run trains on: a sweep loads one stream per distinct value. The
# last part of each key names the ``load_stream`` parameter that takes it (train.valid_fraction: valid_fraction).
STREAM_KEYS = ("benchmark", "data_root", "download", "seed", "train.valid_fraction", "task_order")


def _parameter(key: str) -> str:
    return key.rpartition(".")[2]


def loader(benchmark: str) -> Loader:
    """The loader of a registered name or an import path; ``UserError`` naming it when there is none."""
    return resolve("benchmark", benchmark, BENCHMARKS, LOADER_PARAMS, "TaskStream")


def check_benchmark(benchmark: str) -> None:
    """Refuse a benchmark that names no loader before any work: imports a user's module, reads no data."""
    loader(benchmark)


def load_stream(benchmark: str, data_root: str, seed: int, valid_fraction: float, task_order: str = "fixed",
                download: bool = False) -> TaskStream:
    """The benchmark's tasks, in the paper's order or (``task_order=seeded``) shuffled by the seed;
    with ``download``, missing files that torchvision can fetch are downloaded first. The stream is
    stamped with the settings that shaped it (``meta["settings"]``), which ``check_stream`` compares."""
    arguments = dict(locals())  # the parameters by name (no other local exists yet), to stamp the STREAM_KEYS from
    stream = loader(benchmark)(Path(data_root).expanduser(), seed, valid_fraction, download)
    check_task_stream(stream, benchmark)
    if task_order == "seeded":
        order = list(range(len(stream.tasks)))
        random.Random(seed).shuffle(order)
        stream.tasks = [stream.tasks[i] for i in order]
    stream.meta["settings"] = {key: arguments[_parameter(key)] for key in STREAM_KEYS}
    return stream


def stream_settings(cfg, seed: int) -> Dict[str, object]:
    """The stream-shaping settings of a run config with the given seed (``STREAM_KEYS``): what ``load_stream``
    stamps on the stream it makes for them."""
    return {key: seed if key == "seed" else functools.reduce(getattr, key.split("."), cfg) for key in STREAM_KEYS}


def stream_for(cfg, seed: int) -> TaskStream:
    """The stream a run config asks for, with the given seed (the seed shapes splits and orders)."""
    return load_stream(**{_parameter(key): value for key, value in stream_settings(cfg, seed).items()})


def check_stream(stream: TaskStream, cfg, seed: int) -> None:
    """Refuse to train on a stream that the run's settings do not describe: its record would be false."""
    wanted, made = stream_settings(cfg, seed), stream.meta.get("settings")
    if made != wanted:
        differ = sorted(k for k in wanted if (made or {}).get(k, object()) != wanted[k])
        raise RuntimeError(f"stream mismatch: the run's settings ask for "
                           f"{', '.join(f'{k}={wanted[k]}' for k in differ)}"
                           f" but the stream was made with {made}; refusing to train")


def check_task_stream(stream: object, benchmark: str) -> None:
    """What a loader returned, held to the contract before any training: a wrong stream fails here, in one
    line naming the benchmark, the task and the split, rather than deep inside the trainer or as a diverged
    record (NaN inputs). Cheap: one pass over the tensors already in memory."""
    problem = stream_problem(stream)
    if problem:
        raise UserError(f"benchmark={benchmark}: {problem}")


def stream_problem(stream: object) -> Optional[str]:
    """Why ``stream`` breaks the TaskStream contract, or None."""
    if not isinstance(stream, TaskStream):
        return f"returned a {type(stream).__name__}, not a ness_sweep.data.TaskStream"
    if not isinstance(stream.tasks, list) or not stream.tasks:
        return "returned a TaskStream without tasks; tasks must be a non-empty list of ness_sweep.data.Task"
    shape = tuple(stream.input_shape) if isinstance(stream.input_shape, (tuple, list)) else None
    if not shape or not all(isinstance(n, int) and n > 0 for n in shape):
        return f"input_shape={stream.input_shape!r}: must be a tuple of positive sizes, one sample's shape"
    if not isinstance(stream.default_model, str):
        return f"default_model={stream.default_model!r}: must be a model name or import path (what model=auto builds)"
    for t, task in enumerate(stream.tasks):
        problem = task_problem(task, shape)
        if problem:
            return f"task {t} ({getattr(task, 'name', '?')}): {problem}"
    return None


def task_problem(task: object, shape: tuple) -> Optional[str]:
    """Why one task breaks the Task contract (tensor types, shapes, label range), or None."""
    if not isinstance(task, Task):
        return f"a {type(task).__name__}, not a ness_sweep.data.Task"
    if not isinstance(task.num_classes, int) or task.num_classes < 1:
        return f"num_classes={task.num_classes!r}: must be a positive integer"
    for part in ("train", "valid", "test"):
        problem = split_problem(getattr(task, f"x_{part}"), getattr(task, f"y_{part}"), shape, task.num_classes)
        if problem:
            return f"x_{part}/y_{part}: {problem}"
    return normalisation_problem(task.mean, task.std, shape[0])


# A channel whose std is at most this share of its mean is constant to float32 precision (6e-8): normalising
# would divide by zero, or blow rounding noise up to unit scale (a constant channel's std, measured in float64
# as E[x^2] - mean^2, comes out near 1e-8 * mean rather than 0).
CONSTANT_STD = 1e-6


def normalisation_problem(mean: object, std: object, channels: int) -> Optional[str]:
    """Why the per-channel ``mean`` / ``std`` that ``Task.inputs`` normalises by would not give finite, meaningful
    inputs, or None: a std of (nearly) 0, a channel constant over the data it was measured on, divides by zero."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        return "mean and std: give both (per channel) or neither"
    for name, stat in (("mean", mean), ("std", std)):
        if not isinstance(stat, Tensor) or not stat.is_floating_point() or tuple(stat.shape) != (channels,):
            got = f"{stat.dtype} {tuple(stat.shape)}" if isinstance(stat, Tensor) else type(stat).__name__
            return f"{name} is {got}; expected a float tensor of {channels} values, one per channel"
        if not bool(torch.isfinite(stat).all()):
            return f"{name} is NaN or infinite in channel {channel_list(~torch.isfinite(stat))}; inputs would be NaN"
    constant = std <= CONSTANT_STD * mean.abs()
    if bool(constant.any()):
        c = int(constant.nonzero()[0])
        return (f"std is {std[c].item():.3g} (mean {mean[c].item():.3g}) in channel {channel_list(constant)}: the "
                "input is constant there (or std is not positive), so normalising divides by (nearly) zero; give that "
                "channel std 1")
    return None


def channel_list(flags: Tensor) -> str:
    """The flagged channels' indices, '0, 2' (of how many)."""
    return f"{', '.join(str(int(c)) for c in flags.nonzero().flatten()[:10])} (of {len(flags)})"


def split_problem(x: object, y: object, shape: tuple, num_classes: int) -> Optional[str]:
    """Why one split's inputs and labels are not what the trainer takes, or None."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        return f"must be torch tensors, not {type(x).__name__} and {type(y).__name__}"
    if x.dtype not in (torch.float32, torch.uint8) or tuple(x.shape[1:]) != shape:
        return f"inputs are {x.dtype} {tuple(x.shape)}; expected float32 (or uint8) N x {' x '.join(map(str, shape))}"
    if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x) or len(y) == 0:
        return f"labels are {y.dtype} {tuple(y.shape)}; expected int64 ({len(x)},) for {len(x)} inputs, at least one"
    if x.is_floating_point():
        low, high = torch.aminmax(x)  # one pass, no copy; NaN propagates to both
        if not (math.isfinite(low) and math.isfinite(high)):
            bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)  # only on failure: which samples
            return (f"inputs hold NaN or infinite values in {int(bad.sum())} of {len(x)} samples (the first at "
                    f"index {int(bad.nonzero()[0])}); every input must be a finite number")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        return f"labels span {int(y.min())}..{int(y.max())}; expected 0..{num_classes - 1} (num_classes={num_classes})"
    return None
