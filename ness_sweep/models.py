"""Multi-head networks (a shared body and one head per task) and the model registry.

The model contract, for the shipped models and the user's own (``model=my_pkg.nets:build``): a builder
``build(stream: TaskStream) -> nn.Module`` returns a module with

- ``body``: the shared network. NESS adapts, and GPM / SGP project, every ``nn.Linear``, ``nn.Conv1d`` and
  ``nn.Conv2d`` inside it (``statistics.adaptable_layers``: subclasses included; convolutions need ``groups=1``
  and integer zero padding). Under NESS, from the second task on, only those layers' adapters and the current
  head train: everything else in the body (batch norm, other layer types, biases) stays as the first task
  left it.
- ``heads``: an ``nn.ModuleList``, one head per task, sized from ``stream.tasks[t].num_classes``, outside ``body``;
  each head trains on its own task only (LwF excepted: its old heads learn from their distillation terms).
- ``forward(x, task)``: the logits of head ``task`` (an int) for a batch ``x`` of N × ``stream.input_shape``,
  which must equal ``heads[task](body(x))`` (LwF reads every old head's logits from one pass of the body).

``model=auto`` builds the stream's ``default_model``. ``check_model_fits`` builds the model once before any
training and runs two samples of every task through it, so a model that breaks the contract or cannot take
the benchmark's inputs fails in one line. The shipped models use bias-free layers, as the GPM family does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import UserError
from .data import TaskStream
from .user_code import describe, resolve


class MultiHeadNet(nn.Module):
    def __init__(self, body: nn.Module, feature_dim: int, classes_per_task: Sequence[int]):
        super().__init__()
        self.body = body
        self.heads = nn.ModuleList(nn.Linear(feature_dim, c, bias=False) for c in classes_per_task)

    def forward(self, x: Tensor, task: int) -> Tensor:
        return self.heads[task](self.body(x))


def mlp(stream: TaskStream, hidden: Sequence[int] = (256, 256)) -> MultiHeadNet:
    """Input → 256 → 256 (ReLU, no bias) → one head per task; the layers are named (``fc1``, ``fc2``) as the
    diagnostics show them (``rank/fc1``)."""
    layers, width = [("flatten", nn.Flatten())], 1
    for size in stream.input_shape:
        width *= size
    for index, size in enumerate(hidden, start=1):
        layers += [(f"fc{index}", nn.Linear(width, size, bias=False)), (f"relu{index}", nn.ReLU())]
        width = size
    return MultiHeadNet(nn.Sequential(OrderedDict(layers)), width, [t.num_classes for t in stream.tasks])


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    """Normalised by each batch's own statistics at train and test time alike, as in the GPM family:
    no running averages gathered on one task get applied to another."""
    return nn.BatchNorm2d(channels, track_running_stats=False)


def _flat_width(body: nn.Module, input_shape: Sequence[int]) -> int:
    """The width of ``body``'s flattened output, from one dummy batch (not by hand-kept arithmetic)."""
    with torch.no_grad():
        return body(torch.zeros(2, *input_shape)).shape[1]


def _alexnet_stage(index: int, c_in: int, c_out: int, kernel: int, dropout: float) -> List[tuple]:
    """Convolution → batch norm → ReLU → dropout → 2×2 max-pool."""
    return [(f"conv{index}", nn.Conv2d(c_in, c_out, kernel, bias=False)), (f"bn{index}", _batch_norm(c_out)),
            (f"relu{index}", nn.ReLU()), (f"drop{index}", nn.Dropout(dropout)), (f"pool{index}", nn.MaxPool2d(2))]


def alexnet(stream: TaskStream) -> MultiHeadNet:
    """The 5-layer AlexNet of the GPM family (Saha et al., ICLR 2021) for Split CIFAR-100.

    conv 64/128/256 (kernels 4/3/2) → fc 2048 → fc 2048 → one head per task: 5 adapted layers.
    """
    channels = stream.input_shape[0]
    features = (_alexnet_stage(1, channels, 64, 4, 0.2) + _alexnet_stage(2, 64, 128, 3, 0.2)
                + _alexnet_stage(3, 128, 256, 2, 0.5) + [("flatten", nn.Flatten())])
    width = _flat_width(nn.Sequential(OrderedDict(features)), stream.input_shape)
    classifier = []
    for index, (d_in, d_out) in enumerate([(width, 2048), (2048, 2048)], start=1):
        classifier += [(f"fc{index}", nn.Linear(d_in, d_out, bias=False)),
                       (f"fc_bn{index}", nn.BatchNorm1d(d_out, track_running_stats=False)),
                       (f"fc_relu{index}", nn.ReLU()), (f"fc_drop{index}", nn.Dropout(0.5))]
    body = nn.Sequential(OrderedDict(features + classifier))
    return MultiHeadNet(body, 2048, [t.num_classes for t in stream.tasks])


class BasicBlock(nn.Module):
    """Two 3×3 convolutions around a residual connection; where the shape changes, the shortcut is a
    1×1 convolution (an ``nn.Conv2d`` in the body, so NESS adapts it like the others)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _batch_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = _batch_norm(c_out)
        if stride == 1 and c_in == c_out:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _batch_norm(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(stream: TaskStream, base_filters: int = 20) -> MultiHeadNet:
    """The reduced ResNet-18 (GEM, Lopez-Paz & Ranzato 2017; GPM) for 5-Datasets and MiniImageNet.

    20 base filters; the first convolution has stride 1 on 32×32 inputs and stride 2 on larger ones
    (84×84 MiniImageNet), then four stages of two blocks and a 2×2 average pool before the heads.
    """
    stem_stride = 1 if stream.input_shape[-1] <= 32 else 2
    layers = [("conv1", nn.Conv2d(stream.input_shape[0], base_filters, 3, stride=stem_stride, padding=1, bias=False)),
              ("bn1", _batch_norm(base_filters)), ("relu", nn.ReLU())]
    c_in = base_filters
    for stage, (multiplier, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)], start=1):
        c_out = base_filters * multiplier
        layers.append((f"layer{stage}", nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))))
        c_in = c_out
    layers += [("pool", nn.AvgPool2d(2)), ("flatten", nn.Flatten())]
    body = nn.Sequential(OrderedDict(layers))
    return MultiHeadNet(body, _flat_width(body, stream.input_shape), [t.num_classes for t in stream.tasks])


def cnn1d(stream: TaskStream, channels: int = 25) -> MultiHeadNet:
    """The CNN of the MNIST-1D paper (Greydanus & Kobak, ICML 2024) for 1-D signals (C × L).

    Three Conv1d layers of 25 channels (kernels 5/3/3, stride 2, padding 1, ReLU), flattened (25 × 5 on
    40-long signals), then one linear head per task, the paper's single linear layer: 3 adapted layers.
    """
    layers, c_in = [], stream.input_shape[0]
    for index, kernel in enumerate((5, 3, 3), start=1):
        layers += [(f"conv{index}", nn.Conv1d(c_in, channels, kernel, stride=2, padding=1, bias=False)),
                   (f"relu{index}", nn.ReLU())]
        c_in = channels
    body = nn.Sequential(OrderedDict(layers + [("flatten", nn.Flatten())]))
    return MultiHeadNet(body, _flat_width(body, stream.input_shape), [t.num_classes for t in stream.tasks])


Builder = Callable[[TaskStream], nn.Module]

MODELS: Dict[str, Builder] = {"mlp": mlp, "alexnet": alexnet, "resnet18": resnet18, "cnn1d": cnn1d}


def builder(name: str, key: str = "model") -> Builder:
    """The builder of a registered name or an import path; ``UserError`` naming ``key=name`` when there is none."""
    return resolve(key, name, MODELS, ("stream",), "nn.Module with .body and .heads")


def check_model(name: str) -> None:
    """Refuse a model that names no builder before any work (``auto`` is checked once the stream is known)."""
    if name != "auto":
        builder(name)


def build_model(name: str, stream: TaskStream) -> nn.Module:
    """The named model for this stream; ``auto`` takes the benchmark's default."""
    if name == "auto":
        return builder(stream.default_model, "default_model")(stream)
    return builder(name)(stream)


def model_label(cfg, stream: TaskStream) -> str:
    """``model=NAME`` as an error names it (with the default it stands for under ``auto``)."""
    return f"model={cfg.model}" + (f" ({stream.default_model})" if cfg.model == "auto" else "")


def check_model_fits(cfg, stream: TaskStream) -> nn.Module:
    """Build the model and run two samples of every task through it, before any training: a model that breaks
    the contract, or cannot take the benchmark's inputs (alexnet on flat digits), fails in one line naming it.
    Returns the model built."""
    named = model_label(cfg, stream)
    try:
        model = build_model(cfg.model, stream)
        problem = model_problem(model, stream)
    except UserError as error:
        raise UserError(f"{named}: {error}" if cfg.model == "auto" else str(error)) from None
    except Exception as error:  # the builder or forward fails: how depends on the model's code
        raise UserError(f"{named}: does not take benchmark={cfg.benchmark}'s inputs of shape "
                        f"{tuple(stream.input_shape)} ({describe(error)}); use model=auto ({stream.default_model}) "
                        f"or a model that fits") from None
    if problem:
        raise UserError(f"{named}: {problem}")
    return model


def model_problem(model: object, stream: TaskStream) -> Optional[str]:
    """Why ``model`` breaks the contract for this stream (see the module docstring), or None."""
    if not isinstance(model, nn.Module):
        return f"the builder returned a {type(model).__name__}, not an nn.Module"
    body, heads = getattr(model, "body", None), getattr(model, "heads", None)
    if not isinstance(body, nn.Module) or not isinstance(heads, nn.ModuleList):
        return "must have .body (an nn.Module: the shared network NESS adapts) and .heads (an nn.ModuleList)"
    if len(heads) != len(stream.tasks):
        return f"has {len(heads)} heads for {len(stream.tasks)} tasks; build one head per task"
    if {id(p) for p in body.parameters()} & {id(p) for p in heads.parameters()}:
        return "its heads are inside its body; keep them apart (NESS would adapt the heads)"
    model.eval()
    with torch.no_grad():
        for t, task in enumerate(stream.tasks):
            x = task.inputs(task.x_train[:2])
            out = model(x, t)
            wanted = (len(task.x_train[:2]), task.num_classes)
            if not isinstance(out, Tensor) or tuple(out.shape) != wanted:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                return f"forward(x, {t}) gives {got}; task {t} needs logits of shape N x num_classes = {wanted}"
            if not out.is_floating_point():
                return f"forward(x, {t}) gives {out.dtype} logits; training needs floating-point logits"
            if not torch.allclose(out, heads[t](body(x)), rtol=1e-4, atol=1e-5):
                return (f"forward(x, {t}) differs from heads[{t}](body(x)); make forward exactly that "
                        "(LwF reads the old heads' logits from one pass of the body)")
    return None


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
