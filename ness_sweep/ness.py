"""NESS: learning in the null space of previous tasks' layer inputs.

Pham, Vepakomma, Horváth, "Learning in the Null Space: Small Singular Values for Continual Learning",
CPAL 2026 (arXiv 2602.21919). For each adapted layer with frozen weight W, the new task trains only A in
W + A Bᵀ, where B spans the input directions with the smallest singular values over previous tasks, so
for a previous input x the output moves by A (Bᵀ x), which is small. Pure functions for selection (the
statistics are ``statistics``'s); ``NullSpaceAdapter`` for the layer; ``attach_adapters`` / ``merge_adapters``
for the model.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .statistics import CONVOLUTIONS, AdaptedLayer, adaptable_layers, check_adaptable, spectrum


def select_rank(sigma: Tensor, threshold: Optional[float] = None, norm: str = "frobenius",
                rank: Union[int, float, None] = None) -> int:
    """How many of the smallest directions to adapt.

    threshold rule: σᵢ ≤ ε·‖I‖, ‖I‖ Frobenius (√Σσᵢ², the paper) or nuclear (Σσᵢ, the authors' code);
    rank rule: an int count, or a float fraction of d_in; both given: the smaller set.
    ``sigma`` must be ascending (as ``spectrum`` returns it).
    """
    d_in = sigma.numel()
    counts = []
    if threshold is not None:
        if norm == "frobenius":
            scale = sigma.square().sum().sqrt()
        elif norm == "nuclear":
            scale = sigma.sum()
        else:
            raise ValueError(f"ness.norm={norm}: must be frobenius or nuclear")
        counts.append(int((sigma <= threshold * scale).sum()))
    if rank is not None:
        counts.append(min(d_in, int(rank) if isinstance(rank, int) else int(math.floor(rank * d_in + 1e-9))))
    if not counts:
        raise ValueError("select_rank needs a threshold, a rank, or both")
    return min(counts)


class NullSpaceAdapter(nn.Module):
    """A frozen Linear/Conv1d/Conv2d computing with W + A Bᵀ; only A (d_out × r, zero at start) trains.

    Two equal ways to compute it: form W + A Bᵀ (costs d_out·d_in·r per batch, twice with the
    backward pass), or route the input through the low-rank path x → Bᵀx → A(Bᵀx) beside the frozen
    layer (costs r·(d_in + d_out) per input row, three times with the backward pass). Each batch takes
    the cheaper one for its number of rows (samples, times output positions for a convolution).

    Both ways convolve with the base layer's integer zero padding, as torch does for padding_mode="zeros".
    Other convolutions (padding strings, reflect/replicate/circular padding, groups) are refused here by
    ``check_adaptable``: B comes from the zero-padded, ungrouped patches ``statistics.input_rows`` unfolds.
    """

    def __init__(self, base: AdaptedLayer, basis: Tensor):
        super().__init__()
        check_adaptable(base)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        d_out = base.weight.shape[0]
        weight = base.weight
        self.register_buffer("basis", basis.to(weight.dtype).to(weight.device).contiguous())
        # Bᵀ laid out as a weight (r × d_in, r × C × k or r × C × kh × kw): the first step of the low-rank path.
        self.register_buffer("basis_weight", self.basis.T.reshape(basis.shape[1], *weight.shape[1:]).contiguous(),
                             persistent=False)
        self.A = nn.Parameter(torch.zeros(d_out, basis.shape[1], dtype=weight.dtype, device=weight.device))

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def delta_weight(self) -> Tensor:
        """A Bᵀ in the shape of the base weight."""
        return (self.A @ self.basis.T).view_as(self.base.weight)

    def _rows(self, x: Tensor) -> int:
        base = self.base
        if isinstance(base, nn.Linear):
            return x.numel() // x.shape[-1]
        positions = x.shape[0]
        spatial = x.shape[-len(base.kernel_size):]
        for size, k, s, p, d in zip(spatial, base.kernel_size, base.stride, base.padding, base.dilation):
            positions *= (size + 2 * p - d * (k - 1) - 1) // s + 1
        return positions

    def _low_rank_is_cheaper(self, rows: int) -> bool:
        d_out, d_in = self.base.weight.shape[0], self.basis.shape[0]
        merged = 2 * d_out * d_in * self.rank + 3 * rows * d_out * d_in
        low_rank = 2 * rows * d_out * d_in + 3 * rows * self.rank * (d_in + d_out)
        return low_rank < merged

    def forward(self, x: Tensor) -> Tensor:
        base = self.base
        if self.rank == 0:
            return base(x)
        conv = isinstance(base, CONVOLUTIONS)
        convolve = F.conv1d if isinstance(base, nn.Conv1d) else F.conv2d  # used only when conv
        if self._low_rank_is_cheaper(self._rows(x)):
            if conv:
                projected = convolve(x, self.basis_weight, None, base.stride, base.padding, base.dilation)
                pointwise = self.A.view(*self.A.shape, *[1] * len(base.kernel_size))
                return base(x) + convolve(projected, pointwise)
            return base(x) + F.linear(F.linear(x, self.basis_weight), self.A)
        weight = base.weight + self.delta_weight()
        if conv:
            return convolve(x, weight, base.bias, base.stride, base.padding, base.dilation, base.groups)
        return F.linear(x, weight, base.bias)

    @torch.no_grad()
    def merged(self) -> AdaptedLayer:
        """The base layer with W ← W + A Bᵀ (A and B dropped)."""
        if self.rank:
            self.base.weight.add_(self.delta_weight())
        return self.base


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def subspace_bases(grams: Dict[str, Tensor], threshold: Optional[float], norm: str,
                   rank: Union[int, float, None]) -> Tuple[Dict[str, Tensor], Dict[str, float]]:
    """Each layer's basis B (the selected smallest directions) and σ_max of the selected set."""
    bases, sigma_max = {}, {}
    for name, g in grams.items():
        sigma, vectors = spectrum(g)
        r = select_rank(sigma, threshold, norm, rank)
        bases[name] = vectors[:, :r]
        sigma_max[name] = float(sigma[r - 1]) if r else 0.0
    return bases, sigma_max


def attach_adapters(model: nn.Module, bases: Dict[str, Tensor]) -> Dict[str, NullSpaceAdapter]:
    """Freeze the body and wrap each named layer in an adapter with the given basis (d_in × r)."""
    for p in model.body.parameters():
        p.requires_grad_(False)
    layers = adaptable_layers(model)
    adapters = {}
    for name, basis in bases.items():
        adapter = NullSpaceAdapter(layers[name], basis)
        _set_submodule(model.body, name, adapter)
        adapters[name] = adapter
    return adapters


def merge_adapters(model: nn.Module) -> None:
    """W ← W + A Bᵀ for every adapter, leaving plain layers behind (outputs unchanged)."""
    adapters = [(name, m) for name, m in model.body.named_modules() if isinstance(m, NullSpaceAdapter)]
    for name, adapter in adapters:
        _set_submodule(model.body, name, adapter.merged())
