"""``python -m ness_sweep.train``: bad input is one line and exit code 2; good input writes JSON."""

import json
import subprocess
import sys

import pytest

from ness_sweep.train import main

BAD_INPUT = [
    (["nonsense=1"], "nonsense"),
    (["train.momentum_typo=0.5"], "train.momentum_typo"),
    (["train.lr=fast"], "train.lr"),
    (["train.lr=0"], "train.lr"),
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
    (["method=ewc"], "method"),
    (["preset=no_such_preset"], "preset"),
    (["seeds=[]"], "seeds"),
    (["lr"], "lr"),
]


@pytest.mark.parametrize("args,key", BAD_INPUT)
def test_bad_input_is_one_line_naming_the_key(args, key, capsys, tmp_path):
    output = tmp_path / "result.json"
    assert main(args + [f"output={output}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not output.exists()


def test_bad_input_exit_code_from_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ness_sweep.train", "ness.threshold=-1"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: ness.threshold=-1.0: must be > 0, or null to use ness.rank alone"]
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_key_with_default(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for line in ("benchmark=permuted_digits", "ness.threshold=0.01", "ness.norm=frobenius",
                 "ness.memory=replay", "train.lr_patience=5", "output=null"):
        assert line in out


def test_run_writes_json_result(tmp_path, capsys):
    output = tmp_path / "out" / "result.json"
    assert main(["train.epochs=2", "device=cpu", f"output={output}", "benchmark=split_digits"]) == 0
    result = json.loads(output.read_text())
    for key in ("acc", "bwt", "forgetting", "acc_matrix", "ranks", "trainable_params", "seconds", "config"):
        assert key in result
    assert len(result["acc_matrix"]) == 5 and result["acc_matrix"][0][1] is None
    assert len(result["ranks"]) == 5 and len(result["trainable_params"]) == 5
    assert result["config"]["train"]["epochs"] == 2
    out = capsys.readouterr().out
    assert "accuracy matrix" in out and "ACC" in out and "BWT" in out and "epoch 2/2" in out


def test_seeds_report_mean_and_std(tmp_path, capsys):
    output = tmp_path / "seeds.json"
    assert main(["train.epochs=1", "device=cpu", "seeds=[1,2]", f"output={output}", "benchmark=split_digits"]) == 0
    result = json.loads(output.read_text())
    accs = [run["acc"] for run in result["runs"]]
    assert [run["seed"] for run in result["runs"]] == [1, 2]
    assert result["acc"] == pytest.approx(sum(accs) / 2)
    assert result["acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert "mean ± std over 2 seeds" in capsys.readouterr().out
