"""LwF (``method=lwf``): while a new task trains, the old heads must keep answering the new task's inputs as
the model did when the task began; no old data is kept. The loss adds λ T² Σⱼ KL(pⱼ ‖ qⱼ) over the old heads
j < t, with pⱼ = softmax(zⱼ / T) of the snapshot taken when the task began and qⱼ the same of the model in
training, averaged over the batch (T² keeps the gradient's scale independent of the temperature, as in
Hinton et al.'s distillation).

Li, Hoiem, "Learning without Forgetting", TPAMI 2017.

Choices, and why:
- The old heads' terms are summed, not averaged: the paper adds one loss per old task. λ therefore weighs each
  old task against the new one, and the distillation's share of the loss grows with the number of old tasks.
- KL rather than the paper's cross-entropy with the recorded soft targets: they differ by the targets'
  entropy, a constant, so the gradients are the same, and KL is 0 when nothing has drifted.
- The snapshot is in eval mode: the paper records the old network's responses once, before training, with
  no dropout; batch norm sees the same batch in both models (the shipped layers use batch statistics).
- The body and every head seen so far train: the paper optimises the shared and the old tasks' parameters
  jointly with the new head's (so does FACIL); an old head learns only from its distillation term.
- Logits are read as ``heads[j](body(x))``, what ``MultiHeadNet.forward(x, j)`` computes, so that each model
  runs its body once per batch rather than once per old head.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import statistics
from ..config import LwfSettings
from .base import Method


def distillation(old_logits: List[Tensor], new_logits: List[Tensor], temperature: float) -> Tensor:
    """T² Σⱼ KL(softmax(oldⱼ / T) ‖ softmax(newⱼ / T)), each KL averaged over the batch."""
    total = sum(F.kl_div(F.log_softmax(new / temperature, dim=1), F.log_softmax(old / temperature, dim=1),
                         log_target=True, reduction="batchmean")
                for old, new in zip(old_logits, new_logits))
    return temperature ** 2 * total


class Lwf(Method):
    """Learning without forgetting (see the module docstring)."""

    group = "lwf"
    Settings = LwfSettings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.snapshot: Optional[nn.Module] = None  # the model as task t began; only while a task t > 0 trains
        self.reported: Dict[str, float] = {}

    def before_task(self, t: int) -> None:
        if t > 0:
            self.snapshot = copy.deepcopy(self.model).eval().requires_grad_(False)

    def trainable_parameters(self, t: int) -> List[nn.Parameter]:
        """The body and every head seen so far."""
        heads = [p for head in self.model.heads[:t + 1] for p in head.parameters()]
        return list(self.model.body.parameters()) + heads

    def distillation_loss(self, t: int, x: Tensor) -> Tensor:
        """λ T² Σ_{j<t} KL between the snapshot's and the model's softened old-head outputs on ``x``."""
        with torch.no_grad():
            old_features = self.snapshot.body(x)
            old = [self.snapshot.heads[j](old_features) for j in range(t)]
        features = self.model.body(x)
        new = [self.model.heads[j](features) for j in range(t)]
        return self.settings["lambda"] * distillation(old, new, self.settings.temperature)

    def batch_loss(self, t: int, x: Tensor, loss: Tensor) -> Tensor:
        return loss + self.distillation_loss(t, x) if self.snapshot is not None else loss

    @torch.no_grad()
    def after_task(self, t: int) -> None:
        """Record the distillation term the task ended with, on its whole training set in eval mode, then drop
        the snapshot."""
        if self.snapshot is None:
            self.reported = {"distill_loss": 0.0}
            return
        task, total = self.stream.tasks[t], 0.0
        was_training = self.model.training
        self.model.eval()
        try:
            for x in statistics.training_inputs([task], self.cfg.train.eval_batch_size):
                total = total + self.distillation_loss(t, x) * len(x)
        finally:
            self.model.train(was_training)
        self.reported = {"distill_loss": float(total) / len(task.y_train)}
        self.snapshot = None

    def diagnostics(self, t: int) -> Dict[str, float]:
        """``distill_loss``: the distillation term λ T² Σⱼ KL at the end of task t, averaged over its training
        samples (0 on the first task, which has no old heads)."""
        return dict(self.reported)
