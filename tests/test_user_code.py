"""The user's own benchmark and model as import paths (``benchmark=module:function``, ``model=module:function``):
defined in a folder outside the package, trained through ``python -m ness_sweep.train`` from that folder; the
examples/ templates run the same way; every way an import path or what it returns can be wrong is one line,
exit code 2, before any work."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import ness_sweep.train as train
from ness_sweep import models
from ness_sweep.benchmarks import check_benchmark, check_task_stream, load_stream
from ness_sweep.config import UserError
from ness_sweep.methods import METHODS, check_fits, load_run_config
from ness_sweep.models import check_model, mlp, model_problem

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

STREAMS = '''
import torch
from ness_sweep.data import Task, TaskStream, split_train_valid

def make(data_root, seed, valid_fraction, download):
    """3 tasks of 2 Gaussian blobs in 10 dimensions, the same data for every seed."""
    g = torch.Generator().manual_seed(1000)
    tasks = []
    for t in range(3):
        centres = 3 * torch.randn(2, 10, generator=g)
        y = torch.randint(0, 2, (300,), generator=g)
        x = centres[y] + torch.randn(300, 10, generator=g)
        xtr, ytr, xva, yva = split_train_valid(x[:240], y[:240], valid_fraction, seed + t)
        tasks.append(Task(f"blobs {t}", 2, xtr, ytr, xva, yva, x[240:], y[240:]))
    return TaskStream("blobs", tasks, (10,), "mlp")

NOT_CALLABLE = 3

def wrong_type(data_root, seed, valid_fraction, download):
    return [1, 2]

def bad_labels(data_root, seed, valid_fraction, download):
    stream = make(data_root, seed, valid_fraction, download)
    stream.tasks[1].y_test = stream.tasks[1].y_test + 5
    return stream

def takes_nothing():
    pass
'''

NETS = '''
from torch import nn

class Net(nn.Module):
    def __init__(self, stream):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(stream.input_shape[0], 32), nn.ReLU(),
                                  nn.Linear(32, 32), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(32, task.num_classes) for task in stream.tasks)

    def forward(self, x, task):
        return self.heads[task](self.body(x))

def build(stream):
    return Net(stream)

NOT_CALLABLE = "build"

def wrong_type(stream):
    return "a model"

def too_few_heads(stream):
    net = Net(stream)
    net.heads = net.heads[:1]
    return net
'''


def write_user_code(folder: Path) -> Path:
    folder.mkdir()
    (folder / "streams.py").write_text(textwrap.dedent(STREAMS))
    (folder / "nets.py").write_text(textwrap.dedent(NETS))
    return folder


def train_cli(args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__: "nothing created" stays checkable
    return subprocess.run([sys.executable, "-m", "ness_sweep.train", "device=cpu", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """The user's modules in a folder outside the package, the working directory, not yet on sys.path."""
    folder = write_user_code(tmp_path / "user")
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    yield folder
    for name in ("streams", "nets"):
        sys.modules.pop(name, None)


def test_a_benchmark_and_model_outside_the_package_train_through_the_cli(tmp_path):
    folder = write_user_code(tmp_path / "user")
    output = tmp_path / "result.json"
    done = train_cli(["benchmark=streams:make", "model=nets:build", "train.epochs=1", f"output={output}"], folder)
    assert done.returncode == 0, done.stderr
    result = json.loads(output.read_text())
    assert result["config"]["benchmark"] == "streams:make" and result["config"]["model"] == "nets:build"
    assert len(result["acc_matrix"]) == 3 and result["acc"] > 80, result["acc_matrix"]  # chance is 50
    ranks = result["diagnostics"]  # NESS's: rank/<layer>
    assert ranks[0] == {} and all(set(r) == {"rank/1", "rank/3"} for r in ranks[1:])  # both Linear layers
    assert sorted(p.name for p in folder.iterdir()) == ["nets.py", "streams.py"]


@pytest.mark.parametrize("model", ["my_model:build", "auto"])
def test_the_examples_run_from_their_folder(model, tmp_path):
    output = tmp_path / "result.json"
    done = train_cli(["benchmark=my_benchmark:rotated_digits", f"model={model}", "train.epochs=1",
                      "train.batch_size=16", f"output={output}"], EXAMPLES)
    assert done.returncode == 0, done.stderr
    result = json.loads(output.read_text())
    assert len(result["acc_matrix"]) == 4 and result["acc"] > 50, result["acc_matrix"]  # chance is 10
    # my_model's convs and Linear, or the MLP's two layers
    layers = {"rank/0.0", "rank/0.3", "rank/1"} if model == "my_model:build" else {"rank/fc1", "rank/fc2"}
    assert all(set(r) == layers for r in result["diagnostics"][1:]), result["diagnostics"]


BAD_PATHS = [
    ("benchmark=no_such_module:make", "no module named no_such_module"),
    ("benchmark=streams:missing", "has no missing; define missing(data_root, seed, valid_fraction, download)"),
    ("benchmark=streams:NOT_CALLABLE", "NOT_CALLABLE is a int, not a function"),
    ("benchmark=streams:takes_nothing", "takes (), but is called as (data_root, seed, valid_fraction, download)"),
    ("benchmark=streams", "must be one of permuted_digits"),
    ("benchmark=streams:make:x", "not an import path"),
    ("model=no_such_module:build", "no module named no_such_module"),
    ("model=nets:missing", "has no missing; define missing(stream)"),
    ("model=nets:NOT_CALLABLE", "NOT_CALLABLE is a str, not a function"),
    ("model=nets", "must be one of mlp"),
]


@pytest.mark.parametrize("arg,says", BAD_PATHS)
def test_a_bad_import_path_is_one_line_before_any_data_is_read(arg, says, user_folder, monkeypatch, capsys):
    for name in ("stream_for", "run_seed"):
        monkeypatch.setattr(train, name, lambda *a, **k: pytest.fail("work started on a bad import path"))
    assert train.main([arg, "device=cpu", f"output={user_folder}/out.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {arg}: ") and says in err[0], err
    assert sorted(p.name for p in user_folder.iterdir()) == ["nets.py", "streams.py"]


@pytest.mark.parametrize("args,says", [
    (["benchmark=streams:wrong_type"],
     "benchmark=streams:wrong_type: returned a list, not a ness_sweep.data.TaskStream"),
    (["benchmark=streams:bad_labels"], "benchmark=streams:bad_labels: task 1 (blobs 1): x_test/y_test: labels span"),
    (["benchmark=streams:make", "model=nets:wrong_type"], "model=nets:wrong_type: the builder returned a str"),
    (["benchmark=streams:make", "model=nets:too_few_heads"], "model=nets:too_few_heads: has 1 heads for 3 tasks"),
])
def test_what_user_code_returns_is_checked_before_training(args, says, user_folder, monkeypatch, capsys):
    monkeypatch.setattr(train, "run_seed", lambda *a, **k: pytest.fail("training started on a broken stream or model"))
    assert train.main(args + ["device=cpu", f"output={user_folder}/out.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {says}"), err
    assert sorted(p.name for p in user_folder.iterdir()) == ["nets.py", "streams.py"]


def test_a_bad_import_path_exits_2_from_the_command_line_creating_nothing(tmp_path):
    folder = write_user_code(tmp_path / "user")
    done = train_cli(["benchmark=streams:missing", f"output={folder}/out.json"], folder)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "benchmark=streams:missing" in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["nets.py", "streams.py"]


def test_the_working_directory_is_importable_as_under_python_m(user_folder):
    check_benchmark("streams:make")
    check_model("nets:build")
    assert sys.path[0] == str(user_folder) and sys.modules["streams"].__file__ == str(user_folder / "streams.py")


def test_an_error_inside_the_users_module_names_where_it_happened(user_folder):
    (user_folder / "broken.py").write_text("import torch\nvalue = undefined_name\n")
    with pytest.raises(UserError) as caught:
        check_benchmark("broken:make")
    sys.modules.pop("broken", None)
    assert str(caught.value).startswith("benchmark=broken:make: importing broken failed: NameError: ")
    assert f"{user_folder / 'broken.py'}:2" in str(caught.value)


# ---- the contracts, one broken part at a time ----------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_stream("split_digits", "unused", 0, 0.1)


def with_task(stream, t, **changes):
    tasks = list(stream.tasks)
    tasks[t] = dataclasses.replace(tasks[t], **changes)
    return dataclasses.replace(stream, tasks=tasks)


STREAM_BREAKS = [
    (lambda s: dataclasses.replace(s, tasks=[]), "without tasks"),
    (lambda s: dataclasses.replace(s, tasks=[*s.tasks[:1], "task"]), "task 1 (?): a str, not a ness_sweep.data.Task"),
    (lambda s: dataclasses.replace(s, input_shape=(0,)), "input_shape=(0,)"),
    (lambda s: dataclasses.replace(s, default_model=None), "default_model=None"),
    (lambda s: with_task(s, 1, num_classes=0), "task 1 (digits 2/3): num_classes=0"),
    (lambda s: with_task(s, 2, y_test=s.tasks[2].y_test + 2), "task 2 (digits 4/5): x_test/y_test: labels span 2..3"),
    (lambda s: with_task(s, 0, y_train=-s.tasks[0].y_train), "x_train/y_train: labels span -1..0"),
    (lambda s: with_task(s, 0, x_valid=s.tasks[0].x_valid[:, :10]), "x_valid/y_valid: inputs are torch.float32"),
    (lambda s: with_task(s, 0, x_train=s.tasks[0].x_train.double()), "inputs are torch.float64"),
    (lambda s: with_task(s, 0, y_train=s.tasks[0].y_train[:-1]), "x_train/y_train: labels are torch.int64"),
    (lambda s: with_task(s, 0, y_test=s.tasks[0].y_test.int()), "labels are torch.int32"),
    (lambda s: with_task(s, 0, x_test=s.tasks[0].x_test.numpy()), "must be torch tensors, not ndarray"),
    (lambda s: with_task(s, 4, mean=torch.zeros(1)), "task 4 (digits 8/9): mean and std"),
]


def test_a_stream_that_keeps_the_contract_passes(digits):
    check_task_stream(digits, "split_digits")


@pytest.mark.parametrize("breaks,says", STREAM_BREAKS)
def test_each_broken_part_of_a_stream_is_named(breaks, says, digits):
    with pytest.raises(UserError) as caught:
        check_task_stream(breaks(digits), "my.streams:make")
    assert str(caught.value).startswith("benchmark=my.streams:make: ") and says in str(caught.value)


class HeadsInBody(nn.Module):
    def __init__(self, stream):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(64, t.num_classes) for t in stream.tasks)
        self.body = nn.Sequential(nn.Identity(), self.heads)


MODEL_BREAKS = [
    (lambda s: object(), "the builder returned a object, not an nn.Module"),
    (lambda s: nn.Linear(64, 2), "must have .body"),
    (lambda s: mlp(dataclasses.replace(s, tasks=s.tasks[:3])), "has 3 heads for 5 tasks"),
    (HeadsInBody, "its heads are inside its body"),
]


def test_a_model_that_keeps_the_contract_passes(digits):
    assert model_problem(mlp(digits), digits) is None


@pytest.mark.parametrize("breaks,says", MODEL_BREAKS)
def test_each_broken_part_of_a_model_is_named(breaks, says, digits):
    assert says in model_problem(breaks(digits), digits)


def test_a_forward_that_is_not_head_of_body_is_found(digits):
    """LwF reads every old head's logits as heads[j](body(x)): a forward that does more breaks it silently."""
    model = mlp(digits)
    model.forward = lambda x, task: model.heads[task](model.body(x)) * 2
    assert model_problem(model, digits) == ("forward(x, 0) differs from heads[0](body(x)); make forward exactly "
                                            "that (LwF reads the old heads' logits from one pass of the body)")


def test_a_head_of_the_wrong_size_is_found_by_its_output(digits):
    model = mlp(digits)
    model.heads[3] = nn.Linear(256, 5, bias=False)
    assert model_problem(model, digits) == ("forward(x, 3) gives (2, 5); task 3 needs logits of shape "
                                            "N x num_classes = (2, 2)")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_layer_without_input_rows_is_refused_by_the_methods_that_need_them(method, digits, monkeypatch):
    def grouped(stream):
        model = mlp(stream)
        model.body = nn.Sequential(nn.Unflatten(1, (4, 16)), nn.Conv1d(4, 4, 3, groups=2), nn.Flatten(),
                                   nn.Linear(56, 256))
        return model

    monkeypatch.setitem(models.MODELS, "grouped", grouped)
    cfg = load_run_config(["model=grouped", f"method={method}"])
    if method in ("finetune", "ewc", "lwf"):  # no layer statistics: any layer trains
        check_fits(cfg, digits)
        return
    with pytest.raises(UserError) as caught:  # NESS, GPM and SGP read each layer's input rows
        check_fits(cfg, digits)
    assert str(caught.value) == ("model=grouped: 1: Conv1d with groups=2 has no well-defined input rows "
                                 "(groups must be 1)")


# ---- sweeps over the user's code -----------------------------------------------------------------

def sweep_cli(args, cwd: Path, **env_changes: str) -> subprocess.CompletedProcess:
    """The sweep command as a user types it, in its own process (its own local Ray, bound to loopback)."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONDONTWRITEBYTECODE="1", **env_changes)
    space = [] if any(arg.startswith("space=") for arg in args) else ["space=smoke"]
    return subprocess.run([sys.executable, "-m", "ness_sweep.run", *space, "wandb.mode=disabled",
                           "sweep.num_samples=2", "sweep.scheduler=fifo", "sweep.confirm_top=0", "train.epochs=1",
                           "trial.cpu=1",
                           *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_two_trial_sweep_trains_the_users_benchmark_model_and_method_from_the_working_directory(tmp_path):
    """The benchmark and model from the working directory, the method (examples/my_method.py) from PYTHONPATH,
    its own setting searched: the trials import all three and the rows carry the setting and its diagnostics."""
    import pyarrow.parquet as pq

    folder = write_user_code(tmp_path / "user")
    (folder / "space.yaml").write_text("search:\n  l2pull.strength: {loguniform: [0.01, 10.0]}\n"
                                       "fixed:\n  method: my_method:L2Pull\n")
    path = os.pathsep.join(p for p in (str(EXAMPLES), os.environ.get("PYTHONPATH")) if p)
    done = sweep_cli(["space=space.yaml", "benchmark=streams:make", "model=nets:build",
                      f"output_dir={tmp_path / 'out'}", "sweep.name=mine"], folder, PYTHONPATH=path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = pq.read_table(tmp_path / "out" / "mine" / "results.parquet").to_pylist()
    assert [row["status"] for row in rows] == ["TERMINATED", "TERMINATED"], [row["error"] for row in rows]
    assert {row["benchmark"] for row in rows} == {"streams:make"} and {row["model"] for row in rows} == {"nets:build"}
    assert {row["method"] for row in rows} == {"my_method:L2Pull"} and "ness.threshold" not in rows[0]
    assert all(0.01 <= row["l2pull.strength"] <= 10 for row in rows)
    for row in rows:  # no pull in task 1; then how far each task moved the body, and the penalty it ended with
        first, *later = [dict(entry) for entry in row["diagnostics"]]
        assert first == {} and len(later) == 2 and all(set(entry) == {"distance", "penalty"} for entry in later)
        assert all(e["penalty"] == pytest.approx(row["l2pull.strength"] / 2 * e["distance"] ** 2) for e in later)
    assert all(len(row["acc_matrix"]) == 3 and row["acc"] > 60 for row in rows)  # 3 blob tasks; chance is 50
    assert "python -m ness_sweep.train benchmark=streams:make" in done.stdout


@pytest.mark.parametrize("arg, says", [
    ("model=nets:missing", "model=nets:missing: "),
    ("benchmark=no_such_module:make", "benchmark=no_such_module:make: no module named no_such_module"),
    ("model=nets:too_few_heads", "has 1 heads for 3 tasks"),
    ("model=alexnet", "model=alexnet: does not take benchmark=streams:make's inputs"),
])
def test_a_sweep_over_bad_user_code_is_one_line_before_ray_starts(arg, says, tmp_path):
    folder = write_user_code(tmp_path / "user")
    args = ["benchmark=streams:make", "model=nets:build", arg, f"output_dir={tmp_path / 'out'}"]
    done = sweep_cli(args, folder)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr, done.stderr
    assert "sweep " not in done.stdout  # the header comes once Ray is up: it never started
    assert not (tmp_path / "out").exists() and sorted(p.name for p in folder.iterdir()) == ["nets.py", "streams.py"]


def test_a_searched_model_choice_is_checked_option_by_option(tmp_path):
    folder = write_user_code(tmp_path / "user")
    (folder / "space.yaml").write_text("search:\n  model: {choice: ['nets:build', 'nets:wrong_type']}\n")
    done = sweep_cli(["space=space.yaml", "benchmark=streams:make", f"output_dir={tmp_path / 'out'}"], folder)
    assert done.returncode == 2 and "model=nets:wrong_type: the builder returned a str" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_user_modules_to_ship_are_the_users_own_files(user_folder):
    from ness_sweep.user_code import local_module_paths

    (user_folder / "pkg").mkdir()
    (user_folder / "pkg" / "__init__.py").write_text("")
    (user_folder / "pkg" / "nets.py").write_text(NETS)
    try:
        paths = local_module_paths(["streams:make", "pkg.nets:build", "mlp", "ness_sweep.models:mlp",
                                    "json:dumps", "numpy.random:default_rng", "streams:make"])
    finally:
        sys.modules.pop("pkg", None)
    # a module file and a package folder, once each; registry names, ness_sweep and installed packages are not shipped
    assert paths == [str(user_folder / "streams.py"), str(user_folder / "pkg")]
