"""Layer-input statistics shared by NESS, GPM and SGP: which layers have them, how a convolution's input
unfolds into rows, and their float64 Gram matrices G = IᵀI from ONE forward pass over all layers.

For a layer with weight W (d_out × d_in) the rows of I are its inputs: one per sample for a Linear, one per
output position for a convolution (the zero-padded patch its kernel sees, flattened as ``weight.view(d_out, -1)``
orders it: exactly ``F.unfold``). G's eigenvalues are the squared singular values of I, its eigenvectors I's
right singular vectors (GPM's left singular vectors of the representation R = Iᵀ). Nothing here knows a method.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Task, in_batches

AdaptedLayer = Union[nn.Linear, nn.Conv1d, nn.Conv2d]
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d)
ADAPTABLE = (nn.Linear,) + CONVOLUTIONS


def check_adaptable(layer: nn.Module, name: str = "layer") -> None:
    """Only plain Linear and zero-padded, ungrouped Conv1d/Conv2d layers: their input rows are well defined."""
    kind = type(layer).__name__
    if isinstance(layer, CONVOLUTIONS):
        if layer.groups != 1:
            raise ValueError(f"{name}: {kind} with groups={layer.groups} has no well-defined input rows "
                             "(groups must be 1)")
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise ValueError(f"{name}: {kind} needs integer zero padding (got padding={layer.padding!r}, "
                             f"padding_mode={layer.padding_mode!r})")
    elif not isinstance(layer, nn.Linear):
        raise ValueError(f"{name}: only nn.Linear, nn.Conv1d and nn.Conv2d have input statistics, not {kind}")


def as_image(layer: Union[nn.Conv1d, nn.Conv2d], x: Tensor) -> Tuple[Tensor, Dict[str, Tuple[int, int]]]:
    """A Conv1d is a Conv2d over images one row high: its input as N×C×1×L and its geometry as pairs,
    so that both kinds unfold the same way."""
    geometry = dict(kernel_size=layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    if isinstance(layer, nn.Conv2d):
        return x, geometry
    height_one = dict(kernel_size=1, dilation=1, padding=0, stride=1)
    return x.unsqueeze(-2), {key: (height_one[key], value[0]) for key, value in geometry.items()}


def input_rows(layer: AdaptedLayer, x: Tensor) -> Tensor:
    """The rows of I for this layer: one per sample (Linear) or per output position (Conv1d/Conv2d).

    A convolution's row is the zero-padded patch its kernel sees, with its stride and dilation,
    flattened in the order of ``weight.view(d_out, -1)`` — exactly ``F.unfold``.
    """
    if isinstance(layer, CONVOLUTIONS):
        image, geometry = as_image(layer, x)
        patches = F.unfold(image, **geometry)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def input_width(layer: AdaptedLayer) -> int:
    return layer.weight[0].numel()


GRAM_CHUNK_VALUES = 1 << 22  # float64 input-row values per chunk (32 MiB)


def input_gram(layer: AdaptedLayer, x: Tensor) -> Tensor:
    """IᵀI of one batch's input rows, in float64 (rounding in float32 would swamp the smallest
    singular values). Built from chunks of samples, so that a whole batch's unfolded patches and their
    float64 copy never exist at once: for a convolution they are many times the batch itself."""
    x = x.detach()
    width = input_width(layer)
    rows_per_sample = input_rows(layer, x[:1]).shape[0]
    samples_per_chunk = max(1, GRAM_CHUNK_VALUES // max(1, rows_per_sample * width))
    g = torch.zeros(width, width, dtype=torch.float64, device=x.device)
    for chunk in x.split(samples_per_chunk):
        rows = input_rows(layer, chunk).to(torch.float64)
        g.addmm_(rows.T, rows)
    return g


@contextmanager
def recording_grams(layers: Dict[str, AdaptedLayer]) -> Iterator[Dict[str, Tensor]]:
    """Within the block, every forward pass adds each layer's input Gram matrix to the yielded dict."""
    grams: Dict[str, Tensor] = {}

    def hook_for(name: str, layer: AdaptedLayer):
        def hook(module: nn.Module, args: Tuple[Tensor, ...]) -> None:
            g = input_gram(layer, args[0])
            grams[name] = g if name not in grams else grams[name].add_(g)
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(name, layer)) for name, layer in layers.items()]
    try:
        yield grams
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def collect_grams(body: nn.Module, layers: Dict[str, AdaptedLayer], inputs: Iterable[Tensor]) -> Dict[str, Tensor]:
    """All layers' Gram matrices from ONE forward pass of ``body`` over the input batches."""
    was_training = body.training
    body.eval()
    try:
        with recording_grams(layers) as grams:
            for x in inputs:
                body(x)
    finally:
        body.train(was_training)
    return grams


def spectrum(g: Tensor) -> Tuple[Tensor, Tensor]:
    """Singular values of I (ascending) and the matching right singular vectors, from G = IᵀI.

    Eigenvalues are clamped at zero before the square root: rounding makes tiny ones negative,
    and sqrt of a negative would be NaN (the authors' code has this defect).
    """
    eigenvalues, vectors = torch.linalg.eigh(g.to(torch.float64))
    return eigenvalues.clamp(min=0).sqrt(), vectors



def adaptable_layers(model: nn.Module) -> Dict[str, AdaptedLayer]:
    """Every Linear / Conv1d / Conv2d of ``model.body`` (task heads never are), by qualified name: the layers
    NESS adapts and GPM / SGP project."""
    layers = {}
    for name, module in model.body.named_modules():
        if isinstance(module, ADAPTABLE):
            check_adaptable(module, name)
            layers[name] = module
    return layers


def training_inputs(tasks: List[Task], batch_size: int, samples: Union[int, None] = None) -> Iterator[Tensor]:
    """The tasks' training inputs (the first ``samples`` of each, or all), batch by batch, normalised on the
    device: slices of the stored tensors, so no index tensor crosses from the host. ``batch_size`` is
    ``train.eval_batch_size``: a model with batch statistics normalises each batch by its own."""
    for task in tasks:
        for x in in_batches(task.x_train[:samples], batch_size):
            yield task.inputs(x)
