"""Input that cannot give a true record is refused before any work, in one line with exit code 2 (UserError),
nothing trained and nothing written: a user module that exits when imported, data that cannot train (NaN or
infinite inputs, a constant channel the loader normalises, a NaN MNIST-1D cache), a model that fails its first
training step, a Python API call with wrong types or one key given twice, and run-only keys given to a sweep."""

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fake_data import write_fake_cifar100

import ness_sweep
import ness_sweep.train as train
from ness_sweep import run
from ness_sweep.benchmarks import load_stream, mnist1d
from ness_sweep.config import UserError, argument_value, arguments, parse_overrides
from ness_sweep.methods import load_run_config
from ness_sweep.sweep.code import check_models_fit
from ness_sweep.sweep.space import Distribution

STREAMS = '''
import torch
from ness_sweep.data import Task, TaskStream, split_train_valid

def make(data_root, seed, valid_fraction, download):
    """2 tasks of 2 Gaussian blobs in 6 dimensions."""
    g = torch.Generator().manual_seed(7)
    tasks = []
    for t in range(2):
        y = torch.randint(0, 2, (120,), generator=g)
        x = 3 * y[:, None].float() + torch.randn(120, 6, generator=g)
        xtr, ytr, xva, yva = split_train_valid(x[:100], y[:100], valid_fraction, seed + t)
        tasks.append(Task(f"blobs {t}", 2, xtr, ytr, xva, yva, x[100:], y[100:]))
    return TaskStream("blobs", tasks, (6,), "mlp")

def nan_valid(*args):
    stream = make(*args)
    stream.tasks[1].x_valid[3, 2] = float("nan")
    return stream

def inf_test(*args):
    stream = make(*args)
    stream.tasks[0].x_test[5:7, 0] = float("-inf")
    return stream

def constant_normalised(*args):
    """The loader normalises by statistics measured on data whose channel 4 is constant: std 0 there."""
    stream = make(*args)
    for task in stream.tasks:
        task.x_train[:, 4] = 1.0
        task.mean, task.std = task.x_train.mean(dim=0), task.x_train.std(dim=0)
    return stream
'''

NETS = '''
from torch import nn

class Net(nn.Module):
    def __init__(self, stream):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(stream.input_shape[0], 16), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(16, task.num_classes) for task in stream.tasks)

    def forward(self, x, task):
        return self.heads[task](self.body(x))

class TwoAtMost(Net):
    def forward(self, x, task):
        if len(x) > 2:
            raise ValueError("this model takes at most two samples")
        return super().forward(x, task)

class EvalOnly(Net):
    def forward(self, x, task):
        if self.training:
            raise RuntimeError("cannot train")
        return super().forward(x, task)

class IntegerLogits(Net):
    def forward(self, x, task):
        return super().forward(x, task).round().long()

def build(stream):
    return Net(stream)

def two_at_most(stream):
    return TwoAtMost(stream)

def eval_only(stream):
    return EvalOnly(stream)

def integer_logits(stream):
    return IntegerLogits(stream)

def frozen(stream):
    net = Net(stream)
    net.requires_grad_(False)
    return net
'''

USER_FILES = ["nets.py", "streams.py"]


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """The user's modules in the working directory (importable as under ``python -m``); training fails the test."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "streams.py").write_text(textwrap.dedent(STREAMS))
    (folder / "nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(train, "run_seed", lambda *a, **k: pytest.fail("training started on bad input"))
    yield folder
    for name in ("streams", "nets"):
        sys.modules.pop(name, None)


def refused(args, capsys, folder: Path, files=USER_FILES) -> str:
    """The one error line of ``python -m ness_sweep.train ARGS``, run in-process; ``output=`` is never written."""
    assert train.main([*args, "device=cpu", f"output={folder / 'out.json'}"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and out == "", err
    assert sorted(p.name for p in folder.iterdir()) == files
    return lines[0]


# ---- user modules that exit ------------------------------------------------------------------------------

@pytest.mark.parametrize("statement", ["import sys; sys.exit(0)", "raise KeyboardInterrupt"])
def test_a_module_that_exits_when_imported_is_one_line_exit_2(statement, tmp_path):
    (tmp_path / "script.py").write_text(f"{statement}\n")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "ness_sweep.train", "benchmark=script:make", "device=cpu",
                           f"output={tmp_path / 'out.json'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == "", done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: benchmark=script:make: importing script "), lines
    assert f"{tmp_path / 'script.py'}:1" in lines[0] and "__main__" in lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["script.py"]


# ---- data that cannot train ------------------------------------------------------------------------------

@pytest.mark.parametrize("loader,says", [
    ("nan_valid", "task 1 (blobs 1): x_valid/y_valid: inputs hold NaN or infinite values in 1 of"),
    ("inf_test", "task 0 (blobs 0): x_test/y_test: inputs hold NaN or infinite values in 2 of 20 samples "
                 "(the first at index 5)"),
    ("constant_normalised", "task 0 (blobs 0): std is 0 (mean 1) in channel 4 (of 6): the input is constant there"),
])
def test_inputs_that_cannot_train_are_refused_naming_task_and_split(loader, says, user_folder, capsys):
    line = refused([f"benchmark=streams:{loader}", "model=nets:build"], capsys, user_folder)
    assert line.startswith(f"error: benchmark=streams:{loader}: {says}"), line


def test_a_constant_channel_of_a_shipped_benchmark_is_refused(tmp_path, monkeypatch, capsys):
    """split_cifar100 normalises by its training images' channel statistics: a constant channel has std 0."""
    root = write_fake_cifar100(tmp_path / "data")
    path = root / "cifar-100-python" / "train"
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    batch["data"][:, 2 * 1024:] = 128  # channel-major rows: the blue channel
    path.write_bytes(pickle.dumps(batch, protocol=2))
    monkeypatch.setattr(train, "run_seed", lambda *a, **k: pytest.fail("training started on bad input"))
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    line = refused(["benchmark=split_cifar100", f"data_root={root}", "download=false"], capsys, tmp_path,
                   ["data"])
    assert line.startswith("error: benchmark=split_cifar100: task 0 (cifar100 classes 0, ") and \
        "(mean 0.502) in channel 2 (of 3): the input is constant there" in line, line
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == files


def test_a_mnist1d_cache_holding_nan_is_refused_naming_the_file(tmp_path, monkeypatch, capsys):
    made_by = mnist1d.generator_id(mnist1d.MNIST1D_ARGS)
    path = mnist1d.cache_path(tmp_path, made_by)
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.standard_normal((50, 40)).astype(np.float32), "y_train": np.arange(50) % 10,
              "x_test": rng.standard_normal((20, 40)).astype(np.float32), "y_test": np.arange(20) % 10}
    arrays["x_train"][17, 3] = np.nan
    mnist1d.write_cache(path, arrays, made_by)
    before = path.read_bytes()
    monkeypatch.setattr(train, "run_seed", lambda *a, **k: pytest.fail("training started on bad input"))
    line = refused(["benchmark=split_mnist1d", f"data_root={tmp_path}"], capsys, tmp_path, ["mnist1d"])
    assert line.startswith(f"error: {path}: not a valid MNIST-1D cache (ValueError: x_train holds NaN"), line
    assert "delete it" in line and path.read_bytes() == before and os.listdir(path.parent) == [path.name]


# ---- models that cannot train ----------------------------------------------------------------------------

@pytest.mark.parametrize("builder,says", [
    ("two_at_most", "a training step (train mode, a batch of 64 of task 0) fails: ValueError: this model takes "
                    "at most two samples"),
    ("eval_only", "a training step (train mode, a batch of 64 of task 0) fails: RuntimeError: cannot train"),
    ("integer_logits", "torch.int64"),
    ("frozen", "has no parameters that require gradients"),
])
def test_a_model_that_cannot_take_a_training_step_is_refused(builder, says, user_folder, capsys):
    line = refused(["benchmark=streams:make", f"model=nets:{builder}"], capsys, user_folder)
    assert line.startswith(f"error: model=nets:{builder}: ") and says in line, line
    if builder == "integer_logits":
        assert "floating-point logits" in line, line


def test_a_sweeps_model_takes_a_step_on_the_largest_batch_it_searches(user_folder):
    cfg = load_run_config(["benchmark=streams:make", "model=nets:two_at_most", "train.batch_size=2"])
    stream = load_stream("streams:make", "unused", 0, 0.1)
    check_models_fit([(cfg, stream)], {})  # batches of two: it trains
    with pytest.raises(UserError, match=r"^model=nets:two_at_most: a training step \(train mode, a batch of 32 "):
        check_models_fit([(cfg, stream)], {"train.batch_size": Distribution("int", (2, 32))})


def test_a_value_that_is_not_yaml_is_one_line(user_folder, capsys):
    line = refused(["train.lr=[0.1"], capsys, user_folder)
    assert line.startswith("error: could not parse arguments: while parsing a flow sequence"), line


def test_a_batch_of_one_sample_is_refused(user_folder, capsys):
    """The trainer skips single-sample batches (batch norm), so train.batch_size=1 would train nothing."""
    line = refused(["train.batch_size=1"], capsys, user_folder)
    assert line.startswith("error: train.batch_size=1: must be >= 2"), line


# ---- the Python API --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,settings,says", [
    ((5,), {}, "argument 5 is of type int, not a key=value string"),
    ((None,), {}, "argument None is of type NoneType"),
    ((), {"train": {"lr": 0.1}, "train.lr": 0.2}, "train.lr: given twice, as 0.1 and 0.2"),
    (("train.lr=0.1",), {"train": {"lr": 0.2}}, "train.lr: given twice, as 0.1 and 0.2"),
    (("train={lr: 0.1, epochs: 3}",), {"train.epochs": 2}, "train.epochs: given twice, as 3 and 2"),
    ((), {"ness": {"rank": "0.5"}}, "ness.rank"),  # a string stays a string: not read as the number 0.5
    ((), {"out": 5}, "out=5: must be a function"),
])
def test_the_train_api_refuses_wrong_types_and_a_key_given_twice(args, settings, says, user_folder):
    with pytest.raises(UserError) as error:
        ness_sweep.train(*args, **{"out": None, **settings, "output": str(user_folder / "out.json")})
    assert says in str(error.value) and "\n" not in str(error.value), error.value
    assert sorted(p.name for p in user_folder.iterdir()) == USER_FILES


def test_the_sweep_api_refuses_a_key_given_twice(tmp_path):
    with pytest.raises(UserError, match=r"^train\.lr: given twice, as 0\.1 and 0\.2"):
        ness_sweep.sweep("space=smoke", "dry_run=true", f"output_dir={tmp_path / 'out'}", out=lambda line: None,
                         train={"lr": 0.1}, **{"train.lr": 0.2})
    assert not (tmp_path / "out").exists()


def test_a_key_given_twice_is_refused_unless_the_values_agree():
    """Keyword settings have no order to say which value wins; strings alone do (the command line's last)."""
    assert arguments({"train": {"lr": 0.1, "epochs": 2}}, ["train.lr=0.1"]) == ["train.lr=0.1", "train.epochs=2"]
    assert arguments({"seeds": (1, 2), "train.lr": 0.1}, ["seeds=[1,2]", "train={lr: 0.1}"]) == ["seeds=[1,2]",
                                                                                                 "train.lr=0.1"]
    with pytest.raises(UserError, match=r"^train\.lr: given twice, as 0\.1 and 0\.2; give each key once$"):
        arguments({"train.lr": 0.2}, ["train={lr: 0.1, epochs: 2}"])
    assert parse_overrides(["train.lr=0.1", "train.lr=0.2"]).train.lr == 0.2


def test_a_string_setting_reaches_the_config_as_that_string():
    """``arguments`` writes keyword settings as key=value: a string that YAML reads as a number, null, a list or
    a mapping is quoted, and a plain one is left as it is."""
    plain = ["~/data", "it's \"quoted\"", "plain"]
    for text in ["0.5", "null", "true", "[1, 2]", "a: b", "", "' quoted'", *plain]:
        written = argument_value(text)
        assert parse_overrides([f"data_root={written}"]).data_root == text, written
        assert (written == text) == (text in plain), written


# ---- run-only keys given to a sweep ----------------------------------------------------------------------

@pytest.mark.parametrize("arg,says", [
    ("seeds=[1,2]", "seeds=[1,2]: a setting of one run (python -m ness_sweep.train), not of a sweep; a sweep's "
                    "trials each run every seed of trial.seeds=[...]"),
    ("output=result.json", "output=result.json: a setting of one run (python -m ness_sweep.train), not of a sweep; "
                           "a sweep writes its results under output_dir=DIR"),
])
def test_a_sweep_refuses_the_run_only_keys(arg, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run.main(["space=smoke", arg, "dry_run=true", f"output_dir={tmp_path / 'out'}"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {says}"
    assert list(tmp_path.iterdir()) == []
