"""The paper's networks: head shapes, the layers NESS adapts, and NESS's null-space bound on them."""

import pytest
import torch
from torch import nn

from ness_sweep import ness, statistics
from ness_sweep.data import Task, TaskStream
from ness_sweep.models import build_model

CLASSES = (10, 5, 7)


def stream_for(input_shape, classes=CLASSES, default_model="alexnet"):
    """A stream with the given heads and no data: the builders only read shapes and class counts."""
    empty = torch.zeros(0)
    tasks = [Task(f"task {t}", c, empty, empty, empty, empty, empty, empty) for t, c in enumerate(classes)]
    return TaskStream("shapes only", tasks, input_shape, default_model)


@pytest.mark.parametrize("name, input_shape, feature_dim", [
    ("alexnet", (3, 32, 32), 2048),
    ("resnet18", (3, 32, 32), 160 * 2 * 2),  # 8 × 20 filters on a 2×2 map after the 2×2 average pool
    ("resnet18", (3, 84, 84), 160 * 3 * 3),  # stride-2 stem: 42 → 21 → 11 → 6, pooled to 3×3
])
def test_one_head_per_task_with_its_own_width(name, input_shape, feature_dim):
    torch.manual_seed(0)
    model = build_model(name, stream_for(input_shape))
    x = torch.randn(4, *input_shape)
    assert [tuple(model(x, t).shape) for t in range(len(CLASSES))] == [(4, c) for c in CLASSES]
    assert [head.in_features for head in model.heads] == [feature_dim] * len(CLASSES)
    assert tuple(model.body(x).shape) == (4, feature_dim)


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_bias_free_layers_and_batch_statistics_only(name):
    model = build_model(name, stream_for((3, 32, 32)))
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert weighted and all(m.bias is None for m in weighted)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(not m.track_running_stats and m.running_mean is None for m in norms)


def test_auto_model_is_the_streams_default():
    assert build_model("auto", stream_for((3, 32, 32), default_model="resnet18")).body.layer4 is not None
    assert isinstance(build_model("auto", stream_for((3, 32, 32))).body.fc2, nn.Linear)


def test_alexnet_adapts_its_five_layers():
    layers = statistics.adaptable_layers(build_model("alexnet", stream_for((3, 32, 32))))
    assert list(layers) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    convs = [layers[f"conv{i}"] for i in (1, 2, 3)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (4, 4)), (128, (3, 3)), (256, (2, 2))]
    # 32 → conv 4 → 29 → pool 14 → conv 3 → 12 → pool 6 → conv 2 → 5 → pool 2: 256 × 2 × 2 inputs to fc1
    assert [tuple(layers[f].weight.shape) for f in ("fc1", "fc2")] == [(2048, 1024), (2048, 2048)]


@pytest.mark.parametrize("input_shape, stem_stride", [((3, 32, 32), 1), ((3, 84, 84), 2)])
def test_resnet18_adapts_all_twenty_convolutions_including_shortcuts(input_shape, stem_stride):
    layers = statistics.adaptable_layers(build_model("resnet18", stream_for(input_shape)))
    # stem + 4 stages × 2 blocks × 2 convolutions + a 1×1 shortcut where stages 2-4 halve the map
    assert len(layers) == 1 + 16 + 3
    assert all(isinstance(layer, nn.Conv2d) for layer in layers.values())
    shortcuts = sorted(name for name, layer in layers.items() if layer.kernel_size == (1, 1))
    assert shortcuts == ["layer2.0.shortcut.0", "layer3.0.shortcut.0", "layer4.0.shortcut.0"]
    assert layers["conv1"].stride == (stem_stride, stem_stride) and layers["conv1"].out_channels == 20
    assert layers["layer4.1.conv2"].out_channels == 160


def layer_inputs(model, layers, x):
    """Each layer's input during one evaluation pass (the rows its statistics came from)."""
    seen = {}
    handles = [layer.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0]))
               for name, layer in layers.items()]
    model.eval()
    with torch.no_grad():
        model.body(x)
    for handle in handles:
        handle.remove()
    return seen


def train_adapters(model, adapters, x, y, task, steps=5):
    """A few SGD steps of a NESS task: only the A matrices and the task's head train."""
    params = [a.A for a in adapters.values()] + list(model.heads[task].parameters())
    optimizer = torch.optim.SGD(params, lr=0.5)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x, task), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def patch_rows(layer, x):
    """Brute-force rows of I: the zero-padded patch at every output position (conv) or the input (linear)."""
    if isinstance(layer, nn.Conv2d):
        patches = nn.functional.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_ness_task_moves_each_layer_within_the_null_space_bound(name):
    """On previous inputs, a layer's output moves by I B Aᵀ, and ‖I B‖_F ≤ √r · σ_max(selected), so the
    move is at most ‖A‖₂ · √r · σ_max(selected): checked for every adapted layer after real SGD steps."""
    torch.manual_seed(0)
    model = build_model(name, stream_for((3, 32, 32), (4, 4))).double()
    old = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    new, labels = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 4, (6,))
    layers = statistics.adaptable_layers(model)
    seen = layer_inputs(model, layers, old)
    bases, sigma_max = ness.subspace_bases(statistics.collect_grams(model.body, layers, [old]), None, "frobenius", 0.5)
    adapters = ness.attach_adapters(model, bases)
    train_adapters(model, adapters, new, labels, task=1)
    for layer_name, adapter in adapters.items():
        x, rank = seen[layer_name], adapter.rank
        assert rank > 0 and float(adapter.A.detach().abs().max()) > 0, layer_name
        rows = patch_rows(adapter.base, x)
        rounding = 1e-9 * rows.norm()  # exactly-null directions come out of eigh as ±1e-16 · ‖I‖²
        selected_energy = (rows @ adapter.basis).norm()
        assert selected_energy <= rank ** 0.5 * sigma_max[layer_name] + rounding, layer_name
        bound = torch.linalg.matrix_norm(adapter.A.detach(), ord=2) * (rank ** 0.5 * sigma_max[layer_name] + rounding)
        with torch.no_grad():
            moved = (adapter(x) - adapter.base(x)).norm()
        assert moved <= bound, f"{layer_name}: moved {moved:.3e} > bound {bound:.3e}"


def test_alexnet_previous_task_outputs_survive_a_ness_task_in_their_exact_null_space():
    """Single-colour images give every AlexNet layer (no padding) a low-rank input: adapting only its
    exact null space leaves task 0's outputs unchanged, through training and merging, while task 1 learns."""
    torch.manual_seed(0)
    model = build_model("alexnet", stream_for((3, 32, 32), (4, 4))).double()
    old = torch.rand(8, 3, 1, 1, dtype=torch.float64).expand(8, 3, 32, 32)
    new, labels = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 4, (8,))
    model.eval()
    with torch.no_grad():
        old_before, new_features_before = model(old, 0), model.body(new)
    layers = statistics.adaptable_layers(model)
    bases, _ = ness.subspace_bases(statistics.collect_grams(model.body, layers, [old]), 1e-6, "frobenius", None)
    assert bases["conv1"].shape[1] == 48 - 3  # three colour channels, constant over each 4×4×3 patch
    assert all(bases[n].shape[1] == bases[n].shape[0] - 8 for n in layers if n != "conv1")  # one direction per image
    adapters = ness.attach_adapters(model, bases)
    train_adapters(model, adapters, new, labels, task=1)
    ness.merge_adapters(model)
    model.eval()
    with torch.no_grad():
        old_after, new_features_after = model(old, 0), model.body(new)
    assert (old_after - old_before).abs().max() <= 1e-8 * old_before.abs().max()
    assert (new_features_after - new_features_before).norm() >= 1e-2 * new_features_before.norm()
