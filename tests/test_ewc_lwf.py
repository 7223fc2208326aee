"""EWC and LwF against hand computations on tiny models (the Fisher sample by sample, the penalty and its
gradient, online accumulation; the distillation term from softmax and log by hand), and both through the
command line."""


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ness_sweep.data import Task, TaskStream
from ness_sweep.methods import load_run_config
from ness_sweep.methods.ewc import Ewc
from ness_sweep.methods.lwf import Lwf
from ness_sweep.models import MultiHeadNet

INPUTS, FEATURES, CLASSES, TASKS = 3, 5, 3, 4


def tiny_stream(samples: int = 7) -> TaskStream:
    """Three tasks of random inputs and labels: the methods read only the training split."""
    generator = torch.Generator().manual_seed(0)

    def split(n):
        return torch.randn(n, INPUTS, generator=generator), torch.randint(CLASSES, (n,), generator=generator)

    tasks = [Task(f"t{t}", CLASSES, *split(samples), *split(2), *split(2)) for t in range(TASKS)]
    return TaskStream("tiny", tasks, (INPUTS,), "tiny")


def tiny_model(*body_tail: nn.Module) -> MultiHeadNet:
    """Biases and a tanh, so that 1-D parameters and a curved loss are covered."""
    torch.manual_seed(1)
    body = nn.Sequential(nn.Linear(INPUTS, 4), nn.Tanh(), nn.Linear(4, FEATURES), *body_tail)
    return MultiHeadNet(body, FEATURES, [CLASSES] * TASKS)


def method(cls, model, stream, *settings):
    cfg = load_run_config(["device=cpu", f"method={cls.group}", *settings])
    return cls(cfg, model, stream)


def perturb(module: nn.Module, scale: float = 0.3) -> None:
    """Move every weight, as training a later task would."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def hand_fisher(model: MultiHeadNet, task: Task, t: int) -> dict:
    """Mean over samples of the squared gradient of −log p(y|x), one sample and one backward at a time."""
    params = dict(model.body.named_parameters())
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    for x, y in zip(task.x_train, task.y_train):
        loss = -torch.log_softmax(model(x[None], t), dim=1)[0, y]
        for name, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            fisher[name] += g ** 2
    return {name: f / len(task.y_train) for name, f in fisher.items()}


def assert_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-8)


# ---- EWC ---------------------------------------------------------------------------------------------

def test_ewc_fisher_penalty_and_its_gradient_equal_the_hand_computation():
    stream, model = tiny_stream(), tiny_model()
    ewc = method(Ewc, model, stream, "ewc.lambda=3.0")
    ewc.after_task(0)
    fisher = hand_fisher(model, stream.tasks[0], 0)
    assert_close(ewc.fisher, fisher)
    anchor = {name: p.detach().clone() for name, p in model.body.named_parameters()}
    assert_close(ewc.anchor, anchor)
    assert ewc.diagnostics(0)["penalty"] == 0.0
    mean = sum(f.sum() for f in fisher.values()) / sum(f.numel() for f in fisher.values())
    assert ewc.diagnostics(0)["fisher_mean"] == pytest.approx(float(mean), rel=1e-5)

    perturb(model)
    params = dict(model.body.named_parameters())
    cross_entropy = torch.tensor(0.7)
    loss = ewc.batch_loss(1, stream.tasks[1].x_train, cross_entropy)
    want = 3.0 / 2 * sum((fisher[n] * (params[n] - anchor[n]) ** 2).sum() for n in params)
    torch.testing.assert_close(loss - cross_entropy, want)
    gradients = torch.autograd.grad(loss, list(params.values()))
    for name, g in zip(params, gradients):
        torch.testing.assert_close(g, 3.0 * fisher[name] * (params[name] - anchor[name]))
    head_weight = model.heads[1].weight
    assert not any(head_weight is p for p in params.values())  # heads are never penalised


def test_ewc_online_accumulation_weighs_the_old_fisher_by_gamma():
    stream, model = tiny_stream(), tiny_model()
    ewc = method(Ewc, model, stream, "ewc.lambda=2.0", "ewc.gamma=0.25")
    ewc.after_task(0)
    first = hand_fisher(model, stream.tasks[0], 0)
    anchor = {name: p.detach().clone() for name, p in model.body.named_parameters()}
    perturb(model)
    params = dict(model.body.named_parameters())
    penalty = float(sum((first[n] * (params[n] - anchor[n]) ** 2).sum() for n in params).detach())
    ewc.after_task(1)
    assert ewc.diagnostics(1)["penalty"] == pytest.approx(2.0 / 2 * penalty, rel=1e-5)
    second = hand_fisher(model, stream.tasks[1], 1)
    assert_close(ewc.fisher, {name: 0.25 * first[name] + second[name] for name in first})
    assert_close(ewc.anchor, {name: p.detach() for name, p in params.items()})

    kept = {name: f.clone() for name, f in ewc.fisher.items()}
    ewc.after_task(TASKS - 1)  # no later task needs the last task's Fisher
    assert_close(ewc.fisher, kept)
    assert "fisher_mean" not in ewc.diagnostics(TASKS - 1)


def test_ewc_with_batch_statistics_estimates_the_fisher_per_batch():
    """Batch norm without running statistics couples a batch's samples: F = Σ over batches of (b ḡ)² / n."""
    stream, model = tiny_stream(samples=9), tiny_model(nn.BatchNorm1d(FEATURES, track_running_stats=False))
    ewc = method(Ewc, model, stream, "train.batch_size=4")
    ewc.after_task(0)
    model.eval()
    params = dict(model.body.named_parameters())
    task = stream.tasks[0]
    want = {name: torch.zeros_like(p) for name, p in params.items()}
    for batch in (slice(0, 5), slice(5, 9)):  # 9 samples at batch size 4: two batches, no lone last sample
        loss = F.cross_entropy(model(task.x_train[batch], 0), task.y_train[batch])
        for name, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            want[name] += (len(task.y_train[batch]) * g) ** 2 / 9
    assert_close(ewc.fisher, want)


def test_ewc_state_round_trips():
    stream, model = tiny_stream(), tiny_model()
    ewc = method(Ewc, model, stream)
    ewc.after_task(0)
    state = ewc.state_dict()
    assert all(v.device.type == "cpu" for part in state.values() for v in part.values())
    restored = method(Ewc, model, stream)
    restored.load_state_dict(state)
    assert_close(restored.fisher, ewc.fisher)
    assert_close(restored.anchor, ewc.anchor)


# ---- LwF ---------------------------------------------------------------------------------------------

def softened(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = logits / temperature
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def test_lwf_loss_equals_the_hand_computation():
    stream, model = tiny_stream(), tiny_model()
    lwf = method(Lwf, model, stream, "lwf.lambda=0.5", "lwf.temperature=3.0")
    x, t = stream.tasks[2].x_train, 2
    with torch.no_grad():
        old = [model(x, j).clone() for j in range(t)]
    lwf.before_task(t)
    cross_entropy = torch.tensor(1.3)
    assert float(lwf.batch_loss(t, x, cross_entropy).detach()) == pytest.approx(1.3)  # nothing has drifted yet

    perturb(model)
    want = 0
    for j in range(t):  # the old heads only, summed; each KL a mean over the batch
        p, q = softened(old[j], 3.0), softened(model(x, j), 3.0)
        want = want + (p * (torch.log(p) - torch.log(q))).sum(dim=1).mean()
    want = 0.5 * 3.0 ** 2 * want
    torch.testing.assert_close(lwf.batch_loss(t, x, cross_entropy) - cross_entropy, want)

    trained = {id(p) for p in lwf.trainable_parameters(t)}
    assert all(id(p) in trained for head in model.heads[:t + 1] for p in head.parameters())
    assert not any(id(p) in trained for p in model.heads[t + 1].parameters())


def test_lwf_reports_the_distillation_it_ended_with_and_drops_the_snapshot():
    stream, model = tiny_stream(), tiny_model()
    lwf = method(Lwf, model, stream, "lwf.lambda=2.0")
    lwf.before_task(0)
    lwf.after_task(0)
    assert lwf.diagnostics(0) == {"distill_loss": 0.0}
    x = stream.tasks[1].x_train
    with torch.no_grad():
        old = softened(model(x, 0), 2.0)
    lwf.before_task(1)
    perturb(model)
    lwf.after_task(1)
    new = softened(model(x, 0), 2.0)
    want = 2.0 * 2.0 ** 2 * (old * (torch.log(old) - torch.log(new))).sum(dim=1).mean()
    assert lwf.diagnostics(1)["distill_loss"] == pytest.approx(float(want.detach()), rel=1e-5)
    assert lwf.snapshot is None

