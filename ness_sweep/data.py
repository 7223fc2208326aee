"""Task streams: every task's train / validation / test tensors, loaded once. The types, batching and
splits only; the benchmarks that make streams are in ``ness_sweep.benchmarks``.

A stream is a list of ``Task`` objects. Inputs may be stored as uint8 to save memory; ``Task.inputs``
turns a batch into normalised float32 on the device, so normalisation happens per batch, never on the
whole data set at once. Batches are drawn by index (``batches``), never through a DataLoader.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor


@dataclass
class Task:
    """One task: its classes (labels 0..num_classes-1, one head of the model) and three disjoint splits.

    Inputs are float32, or uint8 (scaled to [0, 1], then normalised by ``mean`` / ``std`` if given), each
    split N × ``TaskStream.input_shape``; labels are int64 of length N. The task id is the position in the stream.
    ``benchmarks.check_task_stream`` holds every loaded task to this: finite inputs, labels in 0..num_classes-1,
    no std of (nearly) zero.
    """

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
    """The tasks in training order. ``input_shape``: one sample's shape, no batch axis. ``default_model``: the
    model name or import path that ``model=auto`` builds. ``meta``: free-form facts about the stream, kept
    with it (``load_stream`` adds ``meta["settings"]``, the settings that made it)."""

    name: str
    tasks: List[Task]
    input_shape: Tuple[int, ...]
    default_model: str
    meta: Dict[str, object] = field(default_factory=dict)

    def to(self, device: torch.device) -> "TaskStream":
        return TaskStream(self.name, [t.to(device) for t in self.tasks], self.input_shape, self.default_model,
                          self.meta)


def in_batches(x: Tensor, size: int) -> Tuple[Tensor, ...]:
    """Consecutive slices of ``x`` (no copies) of ``size`` rows; a last slice of one row joins the one before:
    batch norm with batch statistics cannot normalise a single sample."""
    parts = x.split(size)
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts = parts[:-2] + (x[len(x) - len(parts[-2]) - 1:],)
    return parts


def split_train_valid(x: Tensor, y: Tensor, valid_fraction: float, seed: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded, disjoint train / validation split (at least one sample on each side)."""
    n = len(y)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_valid = min(max(1, int(round(valid_fraction * n))), n - 1)
    valid, train = order[:n_valid], order[n_valid:]
    return x[train], y[train], x[valid], y[valid]


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (CPU and CUDA) generators, first thing in every run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
