"""GPM and SGP (``methods/gpm.py``, ``methods/sgp.py``): bases and importances against explicit SVDs of
representations built patch by patch, the projection keeping an old task's outputs through the real loop,
SGP at λ = 1 being GPM, the refusals, and one command-line run of each."""

import json
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ness_sweep
from ness_sweep import statistics
from ness_sweep.benchmarks import stream_for
from ness_sweep.config import UserError
from ness_sweep.data import Task, TaskStream
from ness_sweep.methods import load_run_config, make_trainer
from ness_sweep.methods.gpm import Gpm, default_thresholds, extend_basis
from ness_sweep.methods.sgp import Sgp, updated_importance
from ness_sweep.train import main

TINY = ["device=cpu", "benchmark=test_gpm_sgp:tiny_stream", "model=test_gpm_sgp:tiny_net",
        "train.epochs=4", "train.batch_size=16"]


# ---- a tiny stream whose tasks have low-rank layer inputs, and a net with a Conv2d and a Linear -----------

def tiny_stream(data_root, seed, valid_fraction, download=False) -> TaskStream:
    """Three 2-way tasks on 1×4×4 images; each task has only two distinct images (repeated), so that every
    layer's representation has lower rank than its input width and a basis can span all of it."""
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(3):
        images = torch.randn(2, 1, 4, 4, generator=generator)

        def split(copies):
            return images.repeat(copies, 1, 1, 1), torch.arange(2).repeat(copies)

        tasks.append(Task(f"tiny{t}", 2, *split(20), *split(3), *split(3)))
    return TaskStream("tiny", tasks, (1, 4, 4), "test_gpm_sgp:tiny_net")


class TinyNet(nn.Module):
    def __init__(self, num_tasks: int):
        super().__init__()
        self.body = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(1, 3, 3)), ("bn", nn.BatchNorm2d(3, track_running_stats=False)), ("relu", nn.ReLU()),
            ("flatten", nn.Flatten()), ("fc", nn.Linear(12, 6)), ("relu_fc", nn.ReLU())]))
        self.heads = nn.ModuleList(nn.Linear(6, 2) for _ in range(num_tasks))

    def forward(self, x, task):
        return self.heads[task](self.body(x))


def tiny_net(stream: TaskStream) -> TinyNet:
    return TinyNet(len(stream.tasks))


def tiny_method(cls, *overrides):
    cfg = load_run_config([*TINY, f"method={cls.group}", *overrides])
    stream = stream_for(cfg, cfg.seed)
    return cls(cfg, tiny_net(stream), stream)


def weights_2d(trainer):
    return {name: layer.weight.detach().reshape(len(layer.weight), -1).clone()
            for name, layer in statistics.adaptable_layers(trainer.model).items()}


# ---- (a) the projection keeps an old task's function, through the real loop ---------------------------

def test_gpm_training_moves_weights_only_orthogonally_to_the_bases_and_keeps_old_outputs():
    cfg = load_run_config([*TINY, "method=gpm", "gpm.threshold=0.9999999"])
    trainer = make_trainer(cfg, stream_for(cfg, 0), log=None)
    body = trainer.model.body
    trainer.run(until=1)
    x0 = trainer.stream.tasks[0].x_train
    with torch.no_grad():
        old_outputs = body(x0)
    before = weights_2d(trainer)
    frozen = {name: p.detach().clone() for name, p in body.named_parameters() if p.dim() == 1}
    head0 = trainer.model.heads[0].weight.detach().clone()
    bases = {name: basis.clone() for name, basis in trainer.method.bases.items()}
    assert set(bases) == {"conv", "fc"} and all(0 < b.shape[1] < len(b) for b in bases.values())

    trainer.run(until=2)
    for name, after in weights_2d(trainer).items():
        change = (after - before[name]).double()
        assert change.norm() > 1e-3 * before[name].norm(), name  # the layer trained
        assert (change @ bases[name]).norm() <= 1e-5 * before[name].norm(), name  # float32 rounding only
    with torch.no_grad():
        torch.testing.assert_close(body(x0), old_outputs, rtol=0, atol=1e-5)
    assert all(torch.equal(p, frozen[name]) for name, p in body.named_parameters() if p.dim() == 1)
    assert torch.equal(trainer.model.heads[0].weight, head0)

    trainer.run()
    for basis in trainer.method.bases.values():
        eye = torch.eye(basis.shape[1], dtype=basis.dtype)
        torch.testing.assert_close(basis.T @ basis, eye, rtol=0, atol=1e-10)
    assert trainer.result().diagnostics[0] == {f"basis/{name}": b.shape[1] for name, b in bases.items()}


def test_after_task_0_only_the_projected_weights_and_the_current_head_train():
    method = tiny_method(Gpm)
    trained = {id(p) for p in method.trainable_parameters(1)}
    model = method.model
    heads = {id(p) for p in model.heads[1].parameters()}
    assert trained == {id(model.body.conv.weight), id(model.body.fc.weight)} | heads
    assert {id(p) for p in method.trainable_parameters(0)} == {id(p) for p in model.body.parameters()} | {
        id(p) for p in model.heads[0].parameters()}


# ---- (b) bases and importances against explicit SVDs of brute-force representations ------------------

def brute_rows(layer, x):
    """The layer's input rows built position by position from the padded input, checked against the layer's
    own output (so the row order is the one weight.view(d_out, -1) uses)."""
    if isinstance(layer, nn.Linear):
        return x
    k, s, p, d = layer.kernel_size[0], layer.stride[0], layer.padding[0], layer.dilation[0]
    span = d * (k - 1) + 1
    out = layer(x)
    if isinstance(layer, nn.Conv1d):
        padded = F.pad(x, (p, p))
        patches = {(i,): padded[:, :, i * s:i * s + span:d] for i in range(out.shape[-1])}
    else:
        padded = F.pad(x, (p, p, p, p))
        patches = {(i, j): padded[:, :, i * s:i * s + span:d, j * s:j * s + span:d]
                   for i in range(out.shape[-2]) for j in range(out.shape[-1])}
    rows = []
    for position, patch in patches.items():
        patch = patch.reshape(len(x), -1)
        torch.testing.assert_close(patch @ layer.weight.reshape(len(layer.weight), -1).T,
                                   out[(slice(None), slice(None)) + position])
        rows.append(patch)
    return torch.cat(rows)


def gram_of(layer, x):
    return statistics.collect_grams(nn.Sequential(layer), {"layer": layer}, [x])["layer"]


def projector(basis):
    return basis @ basis.T


def count_by_hand(singular, needed):
    kept, count = 0.0, 0
    while kept < needed and count < len(singular):
        kept += float(singular[count]) ** 2
        count += 1
    return count


LAYERS = [
    (lambda: nn.Linear(12, 3, bias=False), (40, 12)),
    (lambda: nn.Conv1d(4, 3, 3, stride=2, padding=1, dilation=2, bias=False), (5, 4, 9)),
    (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False), (4, 2, 6, 6)),
]


@pytest.mark.parametrize("make_layer,shape", LAYERS, ids=["linear", "conv1d", "conv2d"])
def test_bases_and_importances_equal_explicit_svds_of_the_representations(make_layer, shape):
    torch.manual_seed(0)
    layer, alpha = make_layer().double(), 10.0
    first, later = 0.85, 0.95  # rising, as the paper's CIFAR-100 thresholds do: task 2 must add vectors
    x1 = torch.randn(*shape, dtype=torch.float64)
    x2 = torch.randn(*shape, dtype=torch.float64) * torch.linspace(3, 0.2, shape[1], dtype=torch.float64).view(
        1, -1, *[1] * (len(shape) - 2))  # another task: other channels (features) carry its energy
    with torch.no_grad():
        r1, r2 = brute_rows(layer, x1).T, brute_rows(layer, x2).T  # d_in × n: GPM's representations
    width = len(r1)

    # task 1: the k leading left singular vectors of R, k the fewest with energy >= threshold ‖R‖²
    u1, s1, _ = torch.linalg.svd(r1, full_matrices=False)
    k1 = count_by_hand(s1, first * float((s1 ** 2).sum()))
    basis1 = extend_basis(torch.zeros(width, 0, dtype=torch.float64), gram_of(layer, x1), first)
    assert basis1.shape[1] == k1 and 0 < k1 < width
    torch.testing.assert_close(projector(basis1), projector(u1[:, :k1]), rtol=0, atol=1e-8)
    importance1 = updated_importance(torch.zeros(0, dtype=torch.float64), basis1, gram_of(layer, x1), alpha)
    torch.testing.assert_close(importance1, (alpha + 1) * s1[:k1] / (alpha * s1[:k1] + s1[0]))

    # task 2: the residual's leading vectors, the fewest with ‖M Mᵀ R‖² + their energy >= threshold ‖R‖²
    residual = r2 - projector(u1[:, :k1]) @ r2
    u2, s2, _ = torch.linalg.svd(residual, full_matrices=False)
    k2 = count_by_hand(s2, later * float((r2 ** 2).sum()) - float(((r2 - residual) ** 2).sum()))
    basis2 = extend_basis(basis1, gram_of(layer, x2), later)
    assert basis2.shape[1] == k1 + k2 and k2 > 0
    torch.testing.assert_close(basis2[:, :k1], basis1, rtol=0, atol=1e-10)
    torch.testing.assert_close(projector(basis2), projector(u1[:, :k1]) + projector(u2[:, :k2]), rtol=0, atol=1e-8)
    torch.testing.assert_close(basis2.T @ basis2, torch.eye(k1 + k2, dtype=torch.float64), rtol=0, atol=1e-10)

    # SGP: stored vectors σ = ‖mᵀR‖, new ones the residual's singular values, one max; stored λ add and clip
    sigma = torch.cat([(u1[:, :k1].T @ r2).norm(dim=1), s2[:k2]])
    fresh = (alpha + 1) * sigma / (alpha * sigma + sigma.max())
    expected = torch.cat([(importance1 + fresh[:k1]).clamp(max=1), fresh[k1:]])
    torch.testing.assert_close(updated_importance(importance1, basis2, gram_of(layer, x2), alpha), expected)


def test_the_first_basis_follows_the_papers_eq_5_one_vector_more_than_the_authors_code():
    gram = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    basis = extend_basis(torch.zeros(4, 0, dtype=torch.float64), gram, 0.65)  # 4 + 3 = 7 >= 6.5; 4 < 6.5
    torch.testing.assert_close(projector(basis), torch.diag(torch.tensor([1.0, 1, 0, 0], dtype=torch.float64)))
    assert extend_basis(basis, gram, 0.65) is basis  # the old basis already holds enough: nothing added
    extended = extend_basis(-basis, gram, 0.85)  # 7 + 2 >= 8.5: one more, the old vectors kept as they were
    torch.testing.assert_close(extended[:, :2], -basis, rtol=0, atol=1e-12)
    torch.testing.assert_close(projector(extended), torch.diag(torch.tensor([1.0, 1, 1, 0], dtype=torch.float64)))


def test_thresholds_per_layer():
    assert default_thresholds("split_cifar100", 2, 3) == pytest.approx([0.979, 0.979])  # the paper's
    assert default_thresholds("five_datasets", 1, 4) == [0.965]
    assert default_thresholds("permuted_digits", 2, 2) == [0.99, 0.99]  # chosen on validation data
    assert default_thresholds("split_digits", 2, 0) == [0.97, 0.97]
    assert tiny_method(Gpm, "gpm.threshold=[0.5,0.8]").thresholds(1) == {"conv": 0.5, "fc": 0.8}
    assert tiny_method(Sgp, "sgp.threshold=0.9").thresholds(0) == {"conv": 0.9, "fc": 0.9}


# ---- (c) SGP with every importance 1 is GPM -------------------------------------------------------

def projected_gradients(method, t):
    method.before_task(t)
    model, task = method.model, method.stream.tasks[t]
    model.zero_grad()
    F.cross_entropy(model(task.x_train, t), task.y_train).backward()
    method.adjust_gradients(t)
    return {name: layer.weight.grad.clone() for name, layer in method.layers.items()}


def test_sgp_with_every_importance_1_gives_exactly_gpms_gradient_and_otherwise_scales_it():
    gpm, sgp = tiny_method(Gpm, "gpm.threshold=0.9"), tiny_method(Sgp, "sgp.threshold=0.9")
    sgp.model.load_state_dict(gpm.model.state_dict())
    gpm.after_task(0)
    sgp.after_task(0)
    scaled = projected_gradients(sgp, 1)
    sgp.importances = {name: torch.ones_like(lam) for name, lam in sgp.importances.items()}
    expected = projected_gradients(gpm, 1)
    assert all(torch.equal(g, expected[name]) for name, g in projected_gradients(sgp, 1).items())
    assert any(not torch.allclose(g, expected[name]) for name, g in scaled.items())  # λ < 1 frees some

    # g − g M diag(λ) Mᵀ, in float64 from the raw gradient
    lam = {name: torch.full_like(lam, 0.25) for name, lam in sgp.importances.items()}
    sgp.importances = lam
    sgp.before_task(1)
    sgp.model.zero_grad()
    F.cross_entropy(sgp.model(sgp.stream.tasks[1].x_train, 1), sgp.stream.tasks[1].y_train).backward()
    raw = {name: layer.weight.grad.clone() for name, layer in sgp.layers.items()}
    sgp.adjust_gradients(1)
    for name, layer in sgp.layers.items():
        g, basis = raw[name].reshape(len(layer.weight), -1).double(), sgp.bases[name]
        wanted = g - g @ basis @ torch.diag(lam[name]) @ basis.T
        torch.testing.assert_close(layer.weight.grad.reshape(g.shape).double(), wanted, rtol=0, atol=1e-6)


def test_a_resumed_sgp_run_equals_an_uninterrupted_one():
    cfg = load_run_config([*TINY, "method=sgp", "sgp.threshold=0.9"])
    whole = make_trainer(cfg, stream_for(cfg, 0), log=None).run()
    first = make_trainer(cfg, stream_for(cfg, 0), log=None)
    first.run(until=2)
    state = first.state_dict()
    assert set(state["method"]) == {"bases", "importances"}
    second = make_trainer(cfg, stream_for(cfg, 0), log=None)
    second.load_state_dict(state)
    resumed = second.run()
    assert resumed.acc_matrix == whole.acc_matrix and resumed.diagnostics == whole.diagnostics
    assert set(whole.diagnostics[0]) == {"basis/conv", "basis/fc", "importance/conv", "importance/fc"}


# ---- (d) refusals: one line naming the key, nothing trained or written ------------------------------

@pytest.mark.parametrize("method", ["gpm", "sgp"])
@pytest.mark.parametrize("setting,key", [
    pytest.param("train.optimizer=adam", "train.optimizer", id="adam"),
    pytest.param("train.weight_decay=0.01", "train.weight_decay", id="weight_decay"),
    pytest.param("{method}.threshold=[0.9,0.9,0.9]", "{method}.threshold", id="threshold_list"),  # the MLP has 2
])
def test_settings_that_break_the_projection_are_refused_in_one_line(method, setting, key):
    setting, key = setting.format(method=method), key.format(method=method)
    with pytest.raises(UserError) as error:
        ness_sweep.train(f"method={method}", setting, "device=cpu", out=None)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and key in message, message


def test_the_command_line_refuses_adam_with_exit_code_2_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "result.json"
    assert main(["method=gpm", "train.optimizer=adam", f"output={output}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.optimizer=sgd" in err
    assert list(tmp_path.iterdir()) == []


# ---- (e) one real run of each through the command line ------------------------------------------

@pytest.mark.parametrize("method", ["gpm", "sgp"])
def test_one_epoch_run_through_the_command_line(method, tmp_path, capsys):
    output = tmp_path / "result.json"
    assert main([f"method={method}", "benchmark=split_digits", "train.epochs=1", "device=cpu",
                 f"output={output}"]) == 0
    printed = capsys.readouterr().out
    assert "ACC" in printed and f"{method} basis sizes" in printed
    result = json.loads(output.read_text())
    assert result["acc"] > 60 and len(result["diagnostics"]) == 5
    sizes = [row["basis/fc1"] for row in result["diagnostics"]]
    assert sizes == sorted(sizes) and sizes[0] > 0  # bases only grow
