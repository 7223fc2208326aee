"""The Python API for notebooks: ``ness_sweep.train(...)`` and ``ness_sweep.sweep(...)`` take the command line's
settings and return results, in one process, twice in a row; bad input raises UserError before any work; the
notebook-style example runs as shipped; the torch-free parts import without torch or Ray."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import ness_sweep
from ness_sweep.config import UserError

REPO = Path(__file__).resolve().parents[1]


def without_times(output: dict) -> dict:
    """A result without what the clock decides (``seconds``) or where it was written (``output``)."""
    output = json.loads(json.dumps(output))
    for run in output["runs"]:
        run.pop("seconds")
    output["config"].pop("output")
    return output


def test_train_returns_what_the_command_line_writes_and_runs_twice_in_one_process(tmp_path):
    settings = dict(benchmark="split_digits", train={"epochs": 2}, seeds=[0, 1])
    first = ness_sweep.train("method=ness", out=None, **settings)
    second = ness_sweep.train("method=ness", out=None, **settings)
    assert without_times(first.to_dict()) == without_times(second.to_dict())  # nothing leaks between calls
    output = tmp_path / "cli.json"
    done = subprocess.run([sys.executable, "-m", "ness_sweep.train", "method=ness", "benchmark=split_digits",
                           "train.epochs=2", "seeds=[0,1]", f"output={output}"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # the same numbers, matrices, diagnostics and settings as the command line's JSON
    assert without_times(first.to_dict()) == without_times(json.loads(output.read_text()))
    assert first.acc == pytest.approx(sum(r["acc"] for r in first.runs) / 2)
    assert [r["seed"] for r in first.runs] == [0, 1]


def test_train_takes_dotted_keys_and_strings_alike():
    a = ness_sweep.train("train.epochs=1", "ness.rank=0.5", out=None)
    b = ness_sweep.train(out=None, **{"train.epochs": 1, "ness": {"rank": 0.5}})
    assert a.runs[0]["acc_matrix"] == b.runs[0]["acc_matrix"] and a.config["ness"]["rank"] == 0.5


@pytest.mark.parametrize("settings, says", [
    ({"train": {"lr": -1}}, "train.lr=-1"),
    ({"bogus": 1}, "bogus: unknown key"),
    ({"model": "nowhere:build"}, "model=nowhere:build: no module named nowhere"),
])
def test_bad_settings_raise_before_any_work(settings, says, tmp_path):
    output = tmp_path / "out.json"
    with pytest.raises(UserError, match=says.replace("(", r"\(")):
        ness_sweep.train(out=None, output=str(output), **settings)
    assert not output.exists()


def test_sweep_returns_the_table_and_best_trial_twice_in_one_process(ray_session, tmp_path):
    found = []
    for name in ("first", "second"):
        found.append(ness_sweep.sweep("space=smoke",
                                      sweep={"num_samples": 3, "scheduler": "fifo", "name": name, "confirm_top": 0},
                                      train={"epochs": 1}, output_dir=str(tmp_path), out=lambda line: None))
    for result, name in zip(found, ("first", "second")):
        assert isinstance(result.table, pa.Table) and result.table.num_rows == 3
        frame = result.to_pandas()
        assert list(frame["status"]) == ["TERMINATED"] * 3
        assert result.best["valid_acc"] == frame["valid_acc"].max() and result.confirmed is None
        assert result.best_config["train.lr"] == result.best["train.lr"]
        assert result.best_yaml == str(tmp_path / name / "best.yaml") and Path(result.best_yaml).is_file()
        assert result.unfinished == 0
    # the same seeded search proposes the same configurations: the two sweeps agree row by row
    assert found[0].table.column("train.lr").to_pylist() == found[1].table.column("train.lr").to_pylist()
    assert found[0].table.column("acc").to_pylist() == found[1].table.column("acc").to_pylist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "second"]


def test_sweep_bad_input_raises_before_anything_is_created(tmp_path):
    with pytest.raises(UserError, match="sweep.num_samples"):
        ness_sweep.sweep(space="smoke", sweep={"num_samples": 0}, output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match="space"):
        ness_sweep.sweep(output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_the_notebook_example_runs_as_shipped(tmp_path):
    folder = tmp_path / "examples"
    shutil.copytree(REPO / "examples", folder, ignore=shutil.ignore_patterns("__pycache__", "ness_sweep_results"))
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    done = subprocess.run([sys.executable, "notebook.py"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    chosen = next(line for line in lines if line.startswith("chosen trial"))
    rerun = next(line for line in lines if line.startswith("rerun of its settings"))
    assert chosen.rpartition("ACC ")[2] == rerun.rpartition("ACC ")[2]  # the confirmed headline reruns exactly
    assert sum("TERMINATED" in line for line in lines) == 4  # two search trials, two reruns of the chosen one


def test_the_torch_free_parts_import_without_torch_or_ray():
    code = ("import sys, ness_sweep, ness_sweep.config, ness_sweep.sweep.space; "
            "print(sorted(m for m in ('torch', 'ray', 'optuna', 'pyarrow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
