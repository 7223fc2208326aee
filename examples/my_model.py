"""A template for your own model: a small CNN body and one linear head per task.

Run from this folder:

    python -m ness_sweep.train benchmark=my_benchmark:rotated_digits model=my_model:build

A model is any function ``build(stream) -> nn.Module`` whose module has ``.body`` (the shared network),
``.heads`` (an ``nn.ModuleList``, one head per task) and ``forward(x, task)``. NESS adapts every
``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` inside ``.body``; from the second task on, only those
layers' adapters and the current task's head train.
"""

import torch
from torch import nn

from ness_sweep.data import TaskStream


class SmallCNN(nn.Module):
    def __init__(self, stream: TaskStream, channels: int = 16, width: int = 64):
        super().__init__()
        # Two convolutions and a linear layer, all adapted by NESS. Batch norm, if you add it, stays as the
        # first task left it (track_running_stats=False keeps one task's statistics off the others).
        features = nn.Sequential(
            nn.Conv2d(stream.input_shape[0], channels, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten())
        with torch.no_grad():  # the flattened width, from one dummy sample of the stream's shape
            flat = features(torch.zeros(1, *stream.input_shape)).shape[1]
        self.body = nn.Sequential(features, nn.Linear(flat, width, bias=False), nn.ReLU())
        # One head per task, sized from the task's classes; heads stay outside the body.
        self.heads = nn.ModuleList(nn.Linear(width, task.num_classes) for task in stream.tasks)

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.heads[task](self.body(x))


def build(stream: TaskStream) -> nn.Module:
    return SmallCNN(stream)
