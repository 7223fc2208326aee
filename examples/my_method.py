"""A template for your own continual-learning method: an L2 pull toward the weights the previous task left.

From the second task on, the loss of every batch adds (λ/2) ‖θ − θ_prev‖² over the body's parameters, θ_prev
being the body as the previous task ended (a snapshot taken after each task); λ is ``l2pull.strength``. It is
online EWC with every Fisher value 1 and γ = 0: the simplest penalty method, a baseline any better one should
beat.

Run it with this folder importable, from the repository root:

    PYTHONPATH=examples python -m ness_sweep.train method=my_method:L2Pull
    PYTHONPATH=examples python -m ness_sweep.train method=my_method:L2Pull l2pull.strength=1 seeds=[0,1,2]

or from this folder (the working directory is importable, as with any ``python -m``):

    python -m ness_sweep.train method=my_method:L2Pull

A sweep takes it the same way, and ships this module to every Ray node (``runtime_env`` ``py_modules``):

    PYTHONPATH=examples python -m ness_sweep.run space=my_space.yaml

with ``my_space.yaml`` holding ``fixed: {method: my_method:L2Pull}`` and, say,
``search: {l2pull.strength: {loguniform: [0.01, 10.0]}}``.

A method is a subclass of ``ness_sweep.methods.Method`` that overrides only the hooks it needs (see
``ness_sweep/methods/base.py``); ``group`` names its settings group (``l2pull.*``) and ``Settings`` is that
group's schema, a dataclass of ``ness_sweep.config.setting``s. Only the group of the method in use is read.

The pull's curvature is λ on every body weight: plain SGD with momentum μ diverges on it once lr · λ reaches
2 (1 + μ) (with the default lr 0.05 and μ 0.9: λ ≥ 76), so a large λ needs a small learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
from torch import Tensor

from ness_sweep.config import UserError, setting
from ness_sweep.methods import Method


@dataclass
class L2PullSettings:
    # The default is the best validation ACC of 0.01 ... 30 on permuted_digits (mlp, seed 0, each task's
    # validation split in place of its test split); 0.02 to 3 all came within 4 points of it.
    strength: float = setting(0.05, "lambda of the pull (lambda/2) |theta - theta_prev|^2 toward the body's "
                                   "weights after the previous task; >= 0 (0 is fine-tuning)")


class L2Pull(Method):
    """Fine-tuning plus an L2 pull of the body toward its weights after the previous task."""

    group = "l2pull"
    Settings = L2PullSettings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.previous: Dict[str, Tensor] = {}  # θ_prev by the body's parameter names; empty during task 1
        self.reported: Dict[str, float] = {}

    @classmethod
    def check_config(cls, cfg) -> None:
        strength = cfg.l2pull.strength
        if not strength >= 0:
            raise UserError(f"l2pull.strength={strength}: must be >= 0 (0 is fine-tuning)")

    def squared_distance(self) -> Tensor:
        """‖θ − θ_prev‖² over the body's parameters."""
        body = dict(self.model.body.named_parameters())
        return sum((body[name] - old).pow(2).sum() for name, old in self.previous.items())

    def penalty(self) -> Tensor:
        """(λ/2) ‖θ − θ_prev‖²."""
        return self.settings.strength / 2 * self.squared_distance()

    def batch_loss(self, t: int, x: Tensor, loss: Tensor) -> Tensor:
        return loss + self.penalty() if self.previous else loss

    @torch.no_grad()
    def after_task(self, t: int) -> None:
        """Report how far task t moved the body, then snapshot it for the next task."""
        if self.previous:
            squared = float(self.squared_distance())
            self.reported = {"distance": squared ** 0.5, "penalty": self.settings.strength / 2 * squared}
        self.previous = {name: p.detach().clone() for name, p in self.model.body.named_parameters()}

    def diagnostics(self, t: int) -> Dict[str, float]:
        """From the second task on: ``distance`` ‖θ − θ_prev‖ and ``penalty`` (λ/2)‖θ − θ_prev‖² as the task
        ended; nothing for the first task, which has no previous weights."""
        return dict(self.reported)

    # A checkpoint between tasks holds the snapshot, so a resumed run pulls toward the same weights.
    def state_dict(self) -> Dict[str, Any]:
        return {"previous": {name: p.cpu() for name, p in self.previous.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        body = dict(self.model.body.named_parameters())
        self.previous = {name: p.to(body[name].device) for name, p in state["previous"].items()}
