"""The base of every method, and fine-tuning itself (``method=finetune``): the forgetting baseline, every task
trains the whole body and its own head.

The loop (``trainer.Trainer``) drives a method only through the hooks below, in this order for task t:
``before_task`` → ``trainable_parameters`` → per batch ``batch_loss``, backward, ``adjust_gradients``, the
optimizer step → ``after_task`` → ``diagnostics``. A method overrides only what differs from fine-tuning
(FACIL's approach template). A user's own method is a subclass named by import path, ``method=module:Class``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from omegaconf import DictConfig
from torch import Tensor, nn

from ..data import TaskStream


class Method:
    """Fine-tuning: no statistics, no extra loss, gradients as they are.

    ``group`` names the method's settings group in the config (``gpm`` for ``gpm.*``) and ``Settings`` is its
    schema, a dataclass whose fields are ``config.setting``s (a default and a help text each); a run reads only
    its method's group, as ``self.settings``. Fine-tuning has none.
    """

    group: Optional[str] = None
    Settings: Optional[type] = None

    def __init__(self, cfg: DictConfig, model: nn.Module, stream: TaskStream):
        self.cfg = cfg  # the whole run config: train.* and the benchmark, as well as the method's group
        self.settings = cfg[self.group] if self.group else None
        self.model = model
        self.stream = stream  # on the model's device
        self.log = lambda line: None  # the trainer's log, set by it

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """Refuse settings this method cannot train with (``UserError``, one line), before any work: ranges
        the schema cannot state, or a combination with other keys (an optimizer that breaks a projection)."""

    @classmethod
    def model_problem(cls, cfg: DictConfig, model: nn.Module) -> Optional[str]:
        """Why this method cannot train ``model`` with these settings (a layer it cannot handle, a setting per
        layer of the wrong length), or None: checked on a freshly built model before any training."""
        return None

    # ---- the hooks -----------------------------------------------------------------------------------
    def before_task(self, t: int) -> None:
        """Prepare task t (counted from 0): fit statistics, attach adapters, snapshot the model."""

    def trainable_parameters(self, t: int) -> List[nn.Parameter]:
        """What trains in task t: the body and task t's head; the other heads stay as their tasks left them."""
        return list(self.model.body.parameters()) + list(self.model.heads[t].parameters())

    def batch_loss(self, t: int, x: Tensor, loss: Tensor) -> Tensor:
        """The loss of one training batch ``x`` (model inputs) of task t, given its cross-entropy ``loss``."""
        return loss

    def adjust_gradients(self, t: int) -> None:
        """Change the trainable parameters' ``.grad`` between backward and the optimizer step."""

    def after_task(self, t: int) -> None:
        """Finish task t before it is evaluated: merge adapters, extend bases, accumulate statistics."""

    def diagnostics(self, t: int) -> Dict[str, float]:
        """Numbers that describe task t's training (a flat dict, e.g. ``rank/fc1``), recorded with its results."""
        return {}

    # ---- what a checkpoint holds between tasks -------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The method's state between tasks beyond the model's weights (tensors on the CPU)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore ``state_dict``'s state (tensors go to the model's device)."""
