"""Multi-head networks: a shared body and one linear head per task (task-incremental learning).

NESS adapts every ``nn.Linear`` and ``nn.Conv2d`` inside ``body``; the heads are trained plainly, each
on its own task only. Bias-free layers, as in the reference networks of the GPM family.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
from torch import Tensor, nn

from .data import TaskStream


class MultiHeadNet(nn.Module):
    def __init__(self, body: nn.Module, feature_dim: int, classes_per_task: Sequence[int]):
        super().__init__()
        self.body = body
        self.heads = nn.ModuleList(nn.Linear(feature_dim, c, bias=False) for c in classes_per_task)

    def forward(self, x: Tensor, task: int) -> Tensor:
        return self.heads[task](self.body(x))


def mlp(stream: TaskStream, hidden: Sequence[int] = (256, 256)) -> MultiHeadNet:
    """Input → 256 → 256 (ReLU, no bias) → one head per task."""
    layers, width = [nn.Flatten()], 1
    for size in stream.input_shape:
        width *= size
    for size in hidden:
        layers += [nn.Linear(width, size, bias=False), nn.ReLU()]
        width = size
    return MultiHeadNet(nn.Sequential(*layers), width, [t.num_classes for t in stream.tasks])


BUILDERS: Dict[str, Callable[[TaskStream], MultiHeadNet]] = {"mlp": mlp}


def build_model(name: str, stream: TaskStream) -> MultiHeadNet:
    """The named model for this stream; ``auto`` takes the benchmark's default."""
    name = stream.default_model if name == "auto" else name
    return BUILDERS[name](stream)


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
