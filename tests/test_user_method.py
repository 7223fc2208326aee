"""The user's own method as an import path (``method=module:Class``), on the template ``examples/my_method.py``
(an L2 pull toward the previous task's weights): it trains through ``python -m ness_sweep.train`` with its own
settings group and its diagnostics reach the JSON result; its penalty, gradient and checkpoint state match a
hand computation; every way the import path, the class or its settings can be wrong is one line, exit code 2,
nothing trained or written. (The sweep over it, its setting searched and the module shipped to Ray's workers:
``test_user_code.py``'s two-trial sweep and ``test_cluster.py``'s sweep on two nodes.)"""

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import ness_sweep.train as train
from ness_sweep.benchmarks import stream_for
from ness_sweep.data import Task, TaskStream
from ness_sweep.methods import load_run_config, make_trainer
from ness_sweep.models import MultiHeadNet

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
L2PULL = "method=my_method:L2Pull"
FAST = ["device=cpu", "benchmark=split_digits", "train.epochs=1"]

BAD_METHODS = '''
from ness_sweep.methods import Method
from my_method import L2Pull


class NotAMethod:
    def __init__(self, cfg, model, stream):
        pass


class TakenGroup(L2Pull):
    group = "ness"


class RunKeyGroup(L2Pull):
    group = "train"


class UpperCaseGroup(L2Pull):
    group = "L2Pull"


class PlainSettings(L2Pull):
    group = "plain"

    class Settings:
        strength = 1.0
'''


@pytest.fixture
def examples(tmp_path, monkeypatch):
    """examples/ importable (as ``PYTHONPATH=examples`` makes it) and a bad user module in the working
    directory, an empty folder otherwise; both modules forgotten afterwards."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    (tmp_path / "bad_methods.py").write_text(textwrap.dedent(BAD_METHODS))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("my_method", "bad_methods"):
        sys.modules.pop(name, None)


# ---- (a) it trains, and what it reports reaches the result ---------------------------------------

def test_the_method_trains_through_the_cli_and_its_diagnostics_reach_the_json(examples, capsys):
    output = examples / "result.json"
    assert train.main([*FAST, L2PULL, "l2pull.strength=2.0", f"output={output}"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(output.read_text())
    assert result["config"]["method"] == "my_method:L2Pull" and result["config"]["l2pull"] == {"strength": 2.0}
    assert "ness" not in result["config"]  # only its own group
    assert len(result["acc_matrix"]) == 5 and result["acc"] > 60, result["acc_matrix"]  # chance is 50
    first, *later = result["diagnostics"]
    assert first == {} and len(later) == 4  # no previous weights to pull toward in task 1
    for entry in later:
        assert set(entry) == {"distance", "penalty"} and entry["distance"] > 0
        assert entry["penalty"] == pytest.approx(2.0 / 2 * entry["distance"] ** 2)
    assert "diagnostics per task" in printed and "task 2: distance=" in printed


def test_strength_zero_is_fine_tuning_to_the_last_digit(examples):
    pulled = train.train(*FAST, L2PULL, "l2pull.strength=0", out=None).runs[0]
    finetuned = train.train(*FAST, "method=finetune", out=None).runs[0]
    assert pulled["acc_matrix"] == finetuned["acc_matrix"]
    assert all(d["penalty"] == 0 for d in pulled["diagnostics"][1:])


def test_the_default_strength_is_read_when_none_is_given(examples):
    cfg = load_run_config(["device=cpu", L2PULL])
    assert cfg.l2pull.strength == importlib.import_module("my_method").L2PullSettings.strength


# ---- the penalty by hand, on a tiny model -------------------------------------------------------

def tiny(strength: float):
    """An L2Pull on a 3 → 4 → 2 MLP body (biases included) with two heads."""
    torch.manual_seed(0)
    model = MultiHeadNet(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), 2, [2, 2])
    tasks = [Task(f"t{t}", 2, torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.randn(2, 3),
                  torch.tensor([0, 1]), torch.randn(2, 3), torch.tensor([0, 1])) for t in range(2)]
    stream = TaskStream("tiny", tasks, (3,), "unused")
    cls = importlib.import_module("my_method").L2Pull
    return cls(load_run_config(["device=cpu", L2PULL, f"l2pull.strength={strength}"]), model, stream), model


def test_the_penalty_and_its_gradient_match_a_hand_computation(examples):
    pull, model = tiny(strength=0.75)
    loss = torch.tensor(1.25)
    assert pull.batch_loss(0, None, loss) is loss  # task 1: nothing to pull toward
    pull.after_task(0)
    before = [p.detach().clone() for p in model.body.parameters()]
    with torch.no_grad():
        for i, p in enumerate(model.body.parameters()):
            p.add_(0.1 * (i + 1) * torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape).cos())
    deltas = [p.detach() - b for p, b in zip(model.body.parameters(), before)]
    squared = sum(float((d.double() ** 2).sum()) for d in deltas)
    total = pull.batch_loss(1, None, loss)
    assert float(total.detach()) == pytest.approx(1.25 + 0.75 / 2 * squared, rel=1e-6)
    total.backward()
    for p, d in zip(model.body.parameters(), deltas):
        torch.testing.assert_close(p.grad, 0.75 * d)  # the pull's gradient: λ (θ − θ_prev)
    assert all(p.grad is None for p in model.heads.parameters())  # heads are not pulled
    pull.after_task(1)
    assert pull.diagnostics(1) == pytest.approx({"distance": squared ** 0.5, "penalty": 0.75 / 2 * squared})
    assert float(pull.batch_loss(1, None, loss).detach()) == pytest.approx(1.25)  # the new snapshot is where it stands


def test_the_snapshot_round_trips_through_the_state_dict(examples):
    pull, model = tiny(strength=0.5)
    pull.after_task(0)
    state = pull.state_dict()
    assert set(state) == {"previous"} and set(state["previous"]) == {n for n, _ in model.body.named_parameters()}
    assert all(v.device.type == "cpu" for v in state["previous"].values())
    with torch.no_grad():
        for p in model.body.parameters():
            p.add_(0.2)
    restored = type(pull)(pull.cfg, model, pull.stream)
    restored.load_state_dict(state)
    assert float(restored.penalty().detach()) == pytest.approx(float(pull.penalty().detach()))


def test_a_resumed_run_equals_an_uninterrupted_one(examples):
    cfg = load_run_config([*FAST, L2PULL, "l2pull.strength=1.5"])
    whole = make_trainer(cfg, stream_for(cfg, 0), log=None).run()
    first = make_trainer(cfg, stream_for(cfg, 0), log=None)
    first.run(until=2)
    state = first.state_dict()  # what a sweep's checkpoint holds after task 2
    second = make_trainer(cfg, stream_for(cfg, 0), log=None)
    second.load_state_dict(state)
    resumed = second.run()
    assert resumed.acc_matrix == whole.acc_matrix and resumed.diagnostics == whole.diagnostics


# ---- (b) every way it can be wrong: one line, exit code 2, nothing trained or written -------------

BAD = [
    (["method=no_such_module:L2Pull"], "method=no_such_module:L2Pull: no module named no_such_module"),
    (["method=my_method:Missing"], "method=my_method:Missing: "),
    (["method=bad_methods:NotAMethod"], "is a type, not a subclass of ness_sweep.methods.base.Method"),
    (["method=bad_methods:TakenGroup"], "group='ness' must be a new lower-case name"),
    (["method=bad_methods:RunKeyGroup"], "group='train' must be a new lower-case name"),
    (["method=bad_methods:UpperCaseGroup"], "group='L2Pull' must be a new lower-case name"),
    (["method=bad_methods:PlainSettings"], "group='plain' needs Settings, a dataclass"),
    ([L2PULL, "l2pull.strength=-1"], "l2pull.strength=-1.0: must be >= 0"),
    ([L2PULL, "l2pull.strength=strong"], "l2pull.strength: "),
    ([L2PULL, "l2pull.strenght=1"], "l2pull.strenght: unknown key"),
    ([L2PULL, "ness.threshold=0.01"], "ness.threshold: a setting of method=ness"),
    (["method=ness", "l2pull.strength=1"], "l2pull"),  # a group no shipped method reads
]


@pytest.mark.parametrize("args,says", BAD, ids=[" ".join(args) for args, _ in BAD])
def test_a_bad_method_or_setting_is_one_line_and_exit_2_with_nothing_written(args, says, examples, monkeypatch,
                                                                             capsys):
    for name in ("stream_for", "run_seed"):
        monkeypatch.setattr(train, name, lambda *a, **k: pytest.fail("work started on a bad method"))
    assert train.main(["device=cpu", *args, f"output={examples / 'out.json'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert [p.name for p in examples.iterdir()] == ["bad_methods.py"]


def test_the_missing_class_message_says_what_to_define(examples, capsys):
    assert train.main(["device=cpu", "method=my_method:Missing"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{EXAMPLES / 'my_method.py'} has no Missing; define Missing(cfg, model, stream)" in err
