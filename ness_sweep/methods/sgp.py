"""SGP (``method=sgp``): GPM's bases, but a basis vector blocks the gradient only in proportion to its
importance λ ∈ [0, 1] to the old tasks (g ← g − g M diag(λ) Mᵀ), so that the weakly used directions of the
old tasks' inputs stay partly free for new tasks. λ = 1 everywhere is GPM.

Saha, Roy, "Continual Learning with Scaled Gradient Projection", AAAI 2023.

λᵢ = (α+1) σᵢ / (α σᵢ + max σ), with σ the singular values (not squared) of the task's representation along
the layer's basis vectors and α = ``sgp.scale``. At a later task a stored vector m gets σ = ‖mᵀR‖ =
sqrt(mᵀ G m) from the new task, a new vector the residual's singular value, all scaled by the same max; a
stored vector's new λ is added to its old one and clipped to [0, 1].
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

from ..config import SgpSettings
from .gpm import Gpm, extend_basis


def importance(basis: Tensor, gram: Tensor, scale: float) -> Tensor:
    """λ of each basis vector b for the task whose representation has the Gram ``gram``: σ = sqrt(bᵀ G b).

    For a new vector, which is orthogonal to the old ones, bᵀ G b = bᵀ Ĝ b with Ĝ the residual's Gram: its
    residual singular value, as the paper has it.
    """
    sigma = (basis * (gram @ basis)).sum(0).clamp(min=0).sqrt()
    if sigma.numel() == 0:
        return sigma
    return (scale + 1) * sigma / (scale * sigma + sigma.max()).clamp(min=torch.finfo(sigma.dtype).tiny)


def updated_importance(previous: Tensor, basis: Tensor, gram: Tensor, scale: float) -> Tensor:
    """The importances after a task: the first ``len(previous)`` vectors of ``basis`` are the stored ones,
    whose new λ adds to the old and is clipped to [0, 1]; the vectors added for this task take their own."""
    fresh = importance(basis, gram.to(basis), scale)
    stored = len(previous)
    return torch.cat([(previous.to(fresh) + fresh[:stored]).clamp(0, 1), fresh[stored:]])


class Sgp(Gpm):
    """GPM with an importance per basis vector (see the module docstring)."""

    group = "sgp"
    Settings = SgpSettings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.importances: Dict[str, Tensor] = {}  # per layer, float64, one per basis vector

    def extend(self, name: str, gram: Tensor, threshold: float) -> None:
        """Add the task's directions, then rescore every vector of the layer on the task's representation."""
        basis = extend_basis(self.stored_basis(name, gram), gram, threshold)
        self.importances[name] = updated_importance(self.importances.get(name, gram.new_zeros(0)), basis, gram,
                                                    self.settings.scale)
        self.bases[name] = basis

    def scaled_basis(self, name: str) -> Tensor:
        return self.bases[name] * self.importances[name]

    def diagnostics(self, t: int) -> Dict[str, float]:
        """GPM's basis sizes and each layer's mean importance."""
        means = {f"importance/{name}": float(lam.mean()) for name, lam in self.importances.items() if lam.numel()}
        return {**super().diagnostics(t), **means}

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "importances": {name: lam.cpu() for name, lam in self.importances.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.importances = {name: lam.to(self.device()) for name, lam in state["importances"].items()}
