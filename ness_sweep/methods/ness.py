"""NESS (``method=ness``): after task 0, each task trains only null-space adapters W + A Bᵀ (B fixed, spanning
the directions in which previous tasks' layer inputs have the smallest singular values) and its own head.

Pham, Vepakomma, Horváth, "Learning in the Null Space: Small Singular Values for Continual Learning",
CPAL 2026 (arXiv 2602.21919). The subspace math and the adapters are ``ness_sweep.ness``'s; this class only
times them within the loop. Batch-norm affine parameters stay as task 0 left them (the paper's choice).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from torch import Tensor, nn

from .. import ness, statistics
from ..config import NessSettings
from .base import Method


class Ness(Method):
    group = "ness"
    Settings = NessSettings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stream_grams: Dict[str, Tensor] = {}  # ness.memory=stream: Σ of finished tasks' Gram matrices
        self.ranks: Dict[int, Dict[str, int]] = {}

    @classmethod
    def model_problem(cls, cfg, model: nn.Module) -> Optional[str]:
        """A layer of the body that NESS cannot adapt (a grouped or 'same'-padded convolution)."""
        try:
            statistics.adaptable_layers(model)
        except ValueError as error:
            return str(error)
        return None

    def before_task(self, t: int) -> None:
        """Attach adapters on the subspaces of the previous tasks' smallest singular values."""
        if t == 0:
            return
        n = self.settings
        grams = self.stream_grams if n.memory == "stream" else self.grams(self.stream.tasks[:t])
        bases, _ = ness.subspace_bases(grams, n.threshold, n.norm, n.rank)
        ness.attach_adapters(self.model, bases)
        self.ranks[t] = {name: int(b.shape[1]) for name, b in bases.items()}
        self.log(f"task {t + 1}/{len(self.stream.tasks)}: null-space ranks "
                 + ", ".join(f"{k}={v}" for k, v in self.ranks[t].items()))

    def trainable_parameters(self, t: int) -> List[nn.Parameter]:
        """Task 0 trains everything; later tasks only the A matrices and their head."""
        if t == 0:
            return super().trainable_parameters(t)
        adapters = [m.A for m in self.model.body.modules() if isinstance(m, ness.NullSpaceAdapter) and m.rank > 0]
        return adapters + list(self.model.heads[t].parameters())

    def after_task(self, t: int) -> None:
        """Merge W ← W + A Bᵀ; with stream memory, add this task's Gram matrices once (not after the last)."""
        ness.merge_adapters(self.model)
        if self.settings.memory == "stream" and t + 1 < len(self.stream.tasks):
            for name, g in self.grams([self.stream.tasks[t]]).items():
                self.stream_grams[name] = g if name not in self.stream_grams else self.stream_grams[name] + g

    def diagnostics(self, t: int) -> Dict[str, float]:
        """The null-space rank of each adapted layer (none on task 0, which trains every weight)."""
        return {f"rank/{name}": rank for name, rank in self.ranks.get(t, {}).items()}

    def grams(self, tasks) -> Dict[str, Tensor]:
        """Gram matrices of every adapted layer's inputs over the tasks' training data, in one forward pass
        (with replay memory: all previous tasks through the current, merged network, as in the paper)."""
        return statistics.collect_grams(self.model.body, statistics.adaptable_layers(self.model),
                                        statistics.training_inputs(tasks, self.cfg.train.eval_batch_size))

    def state_dict(self) -> Dict[str, Any]:
        return {"stream_grams": {k: v.cpu() for k, v in self.stream_grams.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        device = self.model.heads[0].weight.device
        self.stream_grams = {k: v.to(device) for k, v in state["stream_grams"].items()}
