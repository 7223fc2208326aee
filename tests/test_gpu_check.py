"""perf/gpu_check.py without a GPU: the no-CUDA line, every check's code run on the CPU, and its verdicts.

The checks are functions of the device, so the CPU runs the same lines a CUDA machine will (small sizes
and the MLP instead of the paper's models, for speed). The sweep check is fed a stand-in for
``python -m ness_sweep.run``: real processes titled as Ray titles trial workers, and a real results.parquet,
so its sampling of /proc, its reading of the table and its verdicts run for real; the Ray sweep itself is
exercised by ``python perf/gpu_check.py --device cpu --quick --checks sweep``, minutes on two CPUs.
"""

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ness_sweep.methods import METHODS

SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = load_gpu_check()
CPU = torch.device("cpu")
SMALL = dataclasses.replace(gpu_check.QUICK, side=4, models=("mlp",))


def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 1 and "CUDA" in result.stdout


def test_train_check_runs_the_train_command_on_both_devices():
    (row,) = gpu_check.check_train(CPU, SMALL)
    assert row.ok is True and "gap +0.00" in row.result


def test_null_space_check_holds_on_the_cpu_through_both_adapter_paths():
    rows = gpu_check.check_null_space(CPU, SMALL)
    assert len(rows) == 4 and all(row.ok for row in rows)


def test_null_space_check_fails_when_the_update_leaves_the_null_space(monkeypatch):
    """The check can fail: with the basis taken from the LARGEST directions the bound breaks."""
    spectrum = gpu_check.statistics.spectrum
    monkeypatch.setattr(gpu_check.ness, "spectrum", lambda g: (spectrum(g)[0], spectrum(g)[1].flip(1)))
    assert not any(row.ok for row in gpu_check.check_null_space(CPU, SMALL))


def test_checkpoint_check_loads_a_trainer_state_on_the_cpu():
    (row,) = gpu_check.check_checkpoint(CPU, SMALL)
    assert row.ok is True and "0 elsewhere" in row.result


def test_epoch_check_times_both_methods():
    (row,) = gpu_check.check_epoch(CPU, SMALL)
    assert row.ok is None and "finetune" in row.result and "ness" in row.result and "samples/s" in row.result


def test_trainer_epoch_table_times_every_method_against_fine_tuning(capsys):
    """perf/trainer.py's epoch table (its timing is the epoch check's): one row per registered method."""
    gpu_check.perf.methods_vs_finetune("mlp", SMALL.stream(2), ["model=mlp"], 1, CPU)
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()]
    assert [row[2] for row in rows] == list(METHODS) and rows[0][4] == "1.00x"


def test_statistics_check_compares_the_device_with_the_cpu():
    rows = gpu_check.check_statistics(CPU, SMALL)
    assert [row.ok for row in rows] == [None, None, True]
    assert "differ by 0 " in rows[2].result and "eigendecomposition" in rows[0].result


# ---- the sweep check, against a stand-in sweep ---------------------------------------------------

FAKE_SWEEP = """
import subprocess, sys, time
import pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
output_dir, name, statuses, at_once = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
trial = ["ray::ImplicitFunc.train", "-c", "import time; time.sleep(1.5)"]
pending = list(statuses)
while pending:
    wave = [subprocess.Popen(trial, executable=sys.executable) for _ in pending[:at_once]]
    pending = pending[at_once:]
    for process in wave:
        process.wait()
folder = Path(output_dir) / name
folder.mkdir(parents=True)
pq.write_table(pa.table({"trial_id": [str(i) for i in range(len(statuses))], "status": statuses}),
               folder / "results.parquet")
"""


def fake_sweep(statuses, at_once):
    return lambda device, output_dir: [sys.executable, "-c", FAKE_SWEEP, output_dir, gpu_check.SWEEP_NAME,
                                       ",".join(statuses), str(at_once)]


def test_sweep_check_passes_four_finished_trials_at_once():
    rows = gpu_check.check_sweep(CPU, SMALL, command=fake_sweep(["TERMINATED"] * 4, at_once=4))
    assert rows[0].ok is True and "at most 4 at once" in rows[0].result
    assert [row.check for row in rows[1:]] == [f"sweep: trial process {k}" for k in (1, 2, 3, 4)]


@pytest.mark.parametrize("statuses, at_once", [(["TERMINATED"] * 3 + ["ERROR"], 4), (["TERMINATED"] * 4, 3)])
def test_sweep_check_fails_an_errored_trial_or_fewer_than_four_at_once(statuses, at_once):
    rows = gpu_check.check_sweep(CPU, SMALL, command=fake_sweep(statuses, at_once))
    assert rows[0].ok is False


def test_sweep_command_asks_a_quarter_gpu_per_trial_on_cuda():
    command = gpu_check.sweep_command(torch.device("cuda"), "/tmp/out")
    assert command[1:3] == ["-m", "ness_sweep.run"]
    expected = {"space=smoke", "trial.gpu=0.25", "output_dir=/tmp/out", f"sweep.name={gpu_check.SWEEP_NAME}"}
    assert expected <= set(command)


def test_memory_rows_fall_back_to_the_device_total_when_no_process_is_listed():
    samples = [gpu_check.Sample(0.0, [], {}, 500.0), gpu_check.Sample(1.0, [11, 12], {99: 900.0}, 2100.0)]
    rows = gpu_check.trial_rows(samples, on_gpu=True)
    assert "not listed" in rows[0].result and "peak 1,600 MiB above" in rows[-1].result
    listed = gpu_check.trial_rows([gpu_check.Sample(0.5, [11], {11: 812.0}, 1300.0)], on_gpu=True)
    assert len(listed) == 1 and "812 MiB" in listed[0].result


# ---- the table and the exit status ----------------------------------------------------------------

def test_a_failing_or_crashing_check_makes_the_exit_status_1(monkeypatch, capsys):
    def crashes(device, sizes):
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_check, "CHECKS", {"fine": lambda device, sizes: [gpu_check.Row("fine", "ok", True)],
                                              "crash": crashes})
    assert gpu_check.main(["--device", "cpu", "--checks", "fine"]) == 0
    assert gpu_check.main(["--device", "cpu", "--checks", "fine,crash"]) == 1
    assert "| crash | RuntimeError: boom | FAIL |" in capsys.readouterr().out
