"""``python -m ness_sweep.train``: bad input is one line and exit code 2; good input writes JSON and
reruns to the same numbers. Also ``python -m ness_sweep.report``'s arguments."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import ness_sweep.report as report
import ness_sweep.train as train
from ness_sweep.methods import METHODS, shipped_groups
from ness_sweep.train import main

BAD_INPUT = [
    (["nonsense=1"], "nonsense"),
    (["train.momentum_typo=0.5"], "train.momentum_typo"),
    (["train.lr=fast"], "train.lr"),
    (["train.lr=0"], "train.lr"),
    (["train.eval_batch_size=1"], "train.eval_batch_size"),
    (["train.eval_batch_size=many"], "train.eval_batch_size"),
    (["train.epochs=2.5"], "train.epochs"),
    (["ness.threshold=0"], "ness.threshold"),
    (["ness.threshold=-1e-3"], "ness.threshold"),
    (["ness.rank=-1"], "ness.rank"),
    (["ness.rank=1.5"], "ness.rank"),
    (["ness.rank=null", "ness.threshold=null"], "ness.threshold"),
    (["ness.norm=spectral"], "ness.norm"),
    (["ness.memory=disk"], "ness.memory"),
    (["benchmark=mnist"], "benchmark"),
    (["model=vit"], "model"),
    (["method=nope"], "method=nope"),
    (["method=finetune", "ness.threshold=0.5"], "ness.threshold"),  # another method's group
    (["method=ewc", "gpm.threshold=0.9"], "gpm.threshold"),
    (["method=ewc", "ewc.typo=1"], "ewc.typo"),
    (["method=gpm", "gpm.threshold=1.5"], "gpm.threshold"),
    (["method=gpm", "gpm.threshold=[0.9,0.95,0.99]"], "gpm.threshold"),  # three values, two layers: found on the model
    (["method=gpm", "gpm.samples=0"], "gpm.samples"),
    (["method=gpm", "train.optimizer=adam"], "train.optimizer"),
    (["method=sgp", "train.weight_decay=1e-4"], "train.weight_decay"),
    (["method=sgp", "sgp.scale=0"], "sgp.scale"),
    (["method=ewc", "ewc.lambda=-1"], "ewc.lambda"),
    (["method=ewc", "ewc.gamma=1.5"], "ewc.gamma"),
    (["method=lwf", "lwf.lambda=-0.1"], "lwf.lambda"),
    (["method=lwf", "lwf.temperature=0"], "lwf.temperature"),
    (["method=lwf", "lwf.temperature=inf"], "lwf.temperature"),
    (["preset=no_such_preset"], "preset"),
    (["seeds=[]"], "seeds"),
    (["lr"], "lr"),
    (["ness.threshold=inf"], "ness.threshold"),
    (["train.lr=inf"], "train.lr"),
    (["train.weight_decay=inf"], "train.weight_decay"),
    (["seed=99999999999999999999999"], "seed"),
    (["threads=0"], "threads"),
    (["model=alexnet"], "model=alexnet"),  # conv layers on flat digits: found when the model is built
    (["model=resnet18", "benchmark=split_digits"], "model=resnet18"),
]


@pytest.mark.parametrize("args,key", BAD_INPUT)
def test_bad_input_is_one_line_naming_the_key(args, key, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "run_seed", lambda *a, **k: pytest.fail("training started on bad input"))
    output = tmp_path / "result.json"
    assert main(args + [f"output={output}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("output,says", [
    ("/proc/x/out.json", "cannot create files in /proc"),
    ("/proc/out.json", "cannot create files in /proc"),
    ("{tmp}/a_file/out.json", "a_file is a file, not a folder"),
    ("{tmp}/new/" + "n" * 300 + "/out.json", "longer than"),
    ("{tmp}/" + "n" * 300 + ".json", "longer than"),
    ("{tmp}", "is a directory"),
])
def test_an_output_that_cannot_be_written_is_refused_before_training(output, says, capsys, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(train, "stream_for", lambda *a, **k: pytest.fail("work started before the output check"))
    output = output.format(tmp=tmp_path)
    assert main([f"output={output}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: output={output}: ") and says in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_an_existing_output_file_and_new_folders_are_accepted(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    train.check_output(str(tmp_path / "old.json"))
    train.check_output(str(tmp_path / "new" / "deeper" / "out.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]
    assert (tmp_path / "old.json").read_text() == "{}"


def test_a_diverging_run_ends_in_one_line(capsys, tmp_path):
    output = tmp_path / "result.json"
    assert main(["train.lr=1e10", "device=cpu", f"output={output}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr" in err[0] and "too large" in err[0], err
    assert not output.exists()


REFUSED_IN_A_FRESH_PROCESS = [
    (["device=cuda"], "error: device=cuda: this machine has no CUDA GPU"),
    (["seed=99999999999999999999999"], "error: seed=99999999999999999999999: must be in"),
    (["output=/proc/x/out.json"], "error: output=/proc/x/out.json: cannot create files in /proc"),
    (["ness.threshold=inf"], "error: ness.threshold=inf: must be a finite number"),
]


@pytest.mark.parametrize("args,line", REFUSED_IN_A_FRESH_PROCESS)
def test_bad_input_is_refused_by_the_command(args, line, tmp_path):
    """The real command, CUDA hidden: exit 2, one line, nothing created. (The timeout only stops a regression
    that trains a whole default run; it is no timing assertion.)"""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "ness_sweep.train", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(line), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_input_exit_code_from_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ness_sweep.train", "ness.threshold=-1"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: ness.threshold=-1.0: must be > 0, or null to use ness.rank alone"]
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_key_with_default_and_the_groups_by_method(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for line in ("benchmark=permuted_digits", "ness.threshold=0.01", "ness.norm=frobenius",
                 "ness.memory=replay", "train.lr_patience=5", "output=null"):
        assert line in out
    for name, cls in METHODS.items():
        if cls.group:  # each group under its method, every key of it with its default
            section = out[out.index(f"method={name} reads:"):]
            for field in dataclasses.fields(cls.Settings):
                assert f"  {cls.group}.{field.name}=" in section.split(" reads:")[1], (name, field.name)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_runs_from_the_command_line_and_writes_its_diagnostics(method, tmp_path, capsys):
    output = tmp_path / "out" / "result.json"
    assert main([f"method={method}", "train.epochs=2", "device=cpu", f"output={output}",
                 "benchmark=split_digits"]) == 0
    result = json.loads(output.read_text())
    for key in ("acc", "bwt", "forgetting", "acc_matrix", "diagnostics", "trainable_params", "seconds", "config"):
        assert key in result
    assert len(result["acc_matrix"]) == 5 and result["acc_matrix"][0][1] is None
    assert len(result["diagnostics"]) == 5 and len(result["trainable_params"]) == 5
    numbers = [v for task in result["diagnostics"] for v in task.values()]
    assert all(math.isfinite(v) for v in numbers) and (method == "finetune") == (numbers == [])
    own = METHODS[method].group
    assert {group for group in shipped_groups() if group in result["config"]} == ({own} if own else set())
    assert result["config"]["train"]["epochs"] == 2
    out = capsys.readouterr().out
    assert "accuracy matrix" in out and "ACC" in out and "BWT" in out and "epoch 2/2" in out


@pytest.fixture
def torch_threads():
    """Leaves torch's thread count as the test found it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


QUICK = ["train.epochs=1", "device=cpu", "benchmark=split_digits"]


def test_threads_are_applied_and_recorded(tmp_path, torch_threads, capsys):
    torch.set_num_threads(1)
    output = tmp_path / "result.json"
    assert main(QUICK + ["threads=3", f"output={output}"]) == 0
    assert torch.get_num_threads() == 3
    assert json.loads(output.read_text())["config"]["threads"] == 3


def test_one_thread_runs_twice_to_the_same_numbers(tmp_path, torch_threads, capsys):
    results = []
    for name in ("first.json", "second.json"):
        assert main(QUICK + ["threads=1", "train.lr=0.2", f"output={tmp_path / name}"]) == 0
        results.append(json.loads((tmp_path / name).read_text()))
    assert results[0]["acc"] == results[1]["acc"] and results[0]["acc_matrix"] == results[1]["acc_matrix"]


def test_a_preset_holding_threads_reruns_exactly(tmp_path, torch_threads, capsys):
    """What best.yaml promises: the run's own config, as a preset, gives its numbers; its threads applied."""
    first = tmp_path / "first.json"
    assert main(QUICK + ["threads=1", "task_order=seeded", "seed=7", f"output={first}"]) == 0
    config = json.loads(first.read_text())["config"]
    del config["output"]
    (tmp_path / "best.yaml").write_text(OmegaConf.to_yaml(config))
    torch.set_num_threads(2)
    again = tmp_path / "again.json"
    assert main([f"preset={tmp_path / 'best.yaml'}", f"output={again}"]) == 0
    assert torch.get_num_threads() == 1
    rerun = json.loads(again.read_text())
    assert rerun["acc"] == json.loads(first.read_text())["acc"] and rerun["config"]["seed"] == 7


def test_seeds_report_mean_and_std(tmp_path, capsys):
    output = tmp_path / "seeds.json"
    assert main(["train.epochs=1", "device=cpu", "seeds=[1,2]", f"output={output}", "benchmark=split_digits"]) == 0
    result = json.loads(output.read_text())
    accs = [run["acc"] for run in result["runs"]]
    assert [run["seed"] for run in result["runs"]] == [1, 2]
    assert result["acc"] == pytest.approx(sum(accs) / 2)
    assert result["acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert "mean ± std over 2 seeds" in capsys.readouterr().out


# ---- python -m ness_sweep.report ---------------------------------------------------------------------

@pytest.mark.parametrize("top", ["top=0", "top=-1", "top=abc", "top=", "top=2.5"])
def test_report_refuses_a_bad_top_in_one_line(top, tmp_path, capsys):
    assert report.main([str(tmp_path), top]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {top}: top must be a whole number >= 1 (how many trials to list)"]
    assert list(tmp_path.iterdir()) == []
