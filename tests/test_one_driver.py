"""One driver per sweep folder: the folder is claimed atomically and locked for its driver's life (a second driver
or a resume is refused naming it; a dead driver's lock is gone); a file the driver cannot write stops the sweep
without blaming a trial, and the sweep resumes; a sweep whose every trial failed exits 1."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from test_crash_safety import environment, sweep_command, wait_for
from test_optuna_study import assert_study_matches_table

from ness_sweep import results
from ness_sweep.config import UserError
from ness_sweep.sweep import callbacks, lock, plan as planning

THIS_DRIVER = f"PID {os.getpid()} on host {socket.gethostname()}"


def no_warning(line: str) -> None:
    raise AssertionError(f"a local folder is locked, yet: {line}")


def claim(plan) -> None:
    with lock.claimed(plan, no_warning):
        pass


def test_two_unnamed_sweeps_planned_in_the_same_second_get_folders_of_their_own(tmp_path):
    now = datetime(2030, 1, 2, 3, 4, 5)
    first, second = (planning.build_plan(["space=smoke", f"output_dir={tmp_path}"], now=now) for _ in range(2))
    assert first.name == second.name == "smoke-20300102-030405"  # both planned before either made its folder
    with lock.claimed(first, no_warning), lock.claimed(second, no_warning):
        assert (first.name, second.name) == ("smoke-20300102-030405", "smoke-20300102-030405-2")
        assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, second.name]
        assert all(THIS_DRIVER in lock.running_driver(plan.folder) for plan in (first, second))


def test_a_second_driver_or_a_resume_is_refused_naming_the_running_driver(tmp_path):
    args = ["space=smoke", "sweep.name=mine", f"output_dir={tmp_path}"]
    first, second = planning.build_plan(args), planning.build_plan(args)  # both planned before either claims
    with lock.claimed(first, no_warning):
        planning.write_plan(first)
        for refused in (lambda: claim(second),  # planned before the first claimed: refused as it claims
                        lambda: planning.build_plan(args),  # started while the first runs
                        lambda: planning.build_plan(["sweep.name=mine", f"output_dir={tmp_path}", "resume=true"])):
            with pytest.raises(UserError) as caught:
                refused()
            assert THIS_DRIVER in str(caught.value) and "\n" not in str(caught.value), caught.value
        assert "resume=true: sweep mine is running" in str(caught.value)
    assert lock.running_driver(first.folder) is None  # the driver ended: the sweep resumes
    assert planning.build_plan(["sweep.name=mine", f"output_dir={tmp_path}", "resume=true"]).name == "mine"


def test_a_killed_drivers_lock_is_gone_with_it(tmp_path):
    plan = planning.build_plan(["space=smoke", "sweep.name=killed", f"output_dir={tmp_path}"])
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from ness_sweep.sweep import lock, plan as planning
        plan = planning.build_plan(["space=smoke", "sweep.name=killed", "output_dir={tmp_path}"])
        with lock.claimed(plan, print):
            planning.write_plan(plan)
            time.sleep(600)
    """)], env=environment())
    try:
        wait_for(lambda: plan.folder.exists(plan.folder.PLAN) and lock.running_driver(plan.folder), holder)
        assert f"PID {holder.pid} on host {socket.gethostname()}" in lock.running_driver(plan.folder)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.running_driver(plan.folder) is None
    assert planning.build_plan(["sweep.name=killed", f"output_dir={tmp_path}", "resume=true"]).name == "killed"


class FinishedTrial:
    """What the results table reads of a Tune trial that finished every task."""

    trial_id, status, config = "abc_00000", "TERMINATED", {"ness.threshold": 0.01, "train.lr": 0.05}
    last_result = {"task": 5, "acc": 90.0, "valid_acc": 91.0}


def test_a_table_that_cannot_be_written_ends_the_run_without_blaming_the_trial(tmp_path):
    plan = planning.build_plan(["space=smoke", "sweep.name=blocked", f"output_dir={tmp_path}"])
    folder = tmp_path / "blocked"
    with lock.claimed(plan, no_warning):
        (folder / "results.parquet").mkdir()  # a folder where the table goes: it cannot be replaced
        failed = callbacks.FailedWrites()
        table = callbacks.ResultsTable(plan, failed_writes=failed)
        table.on_trial_complete(0, [FinishedTrial], FinishedTrial)  # raising here, Tune would blame the trial
        with pytest.raises(results.WriteFailed) as caught:
            failed.on_step_begin(1, [FinishedTrial])  # the run ends at the next step instead
    message = str(caught.value)  # pyarrow's own words for the cause
    assert message.startswith(f"cannot read {folder / 'results.parquet'} (") and "is a directory" in message
    (folder / "results.parquet").rmdir()
    with pytest.raises(results.WriteFailed) as caught:  # a disk that fills up while the table is written
        results.write_atomically(FullDisk(), str(folder / "results.parquet"), b"rows")
    assert str(caught.value) == f"cannot write full://{folder / 'results.parquet'} (No space left on device)"
    assert sorted(p.name for p in folder.iterdir()) == ["driver.lock"]  # no temporary file left behind


class FullDisk:
    """A file system that fills up while a file is written: the file is made, writing into it fails."""

    type_name = "full"

    def __init__(self):
        self.local = pafs.LocalFileSystem()

    def open_output_stream(self, path):
        return FullFile(path)

    def move(self, source, destination):
        self.local.move(source, destination)

    def delete_file(self, path):
        self.local.delete_file(path)


class FullFile:
    def __init__(self, path):
        Path(path).touch()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_two_drivers_at_once_lose_no_row_and_a_table_in_the_way_stops_the_sweep_resumably(tmp_path):
    """A second driver of the same sweep and a resume, both while it runs, are refused naming it; then a folder
    put where the table goes stops the sweep in one line, blaming no trial; the resume ends every trial."""
    space = tmp_path / "four.yaml"
    space.write_text("search: {train.lr: {loguniform: [0.01, 0.1]}}\n"
                     "fixed: {train.epochs: 3}\n"
                     "sweep: {num_samples: 4, scheduler: fifo, max_concurrent: 1, confirm_top: 0}\n")
    sweep_dir, args = tmp_path / "shared", [f"output_dir={tmp_path}", "sweep.name=shared", "wandb.mode=disabled"]
    table_file = sweep_dir / "results.parquet"
    first = subprocess.Popen(sweep_command(f"space={space}", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=environment())
    try:
        wait_for(lambda: (sweep_dir / "plan.yaml").exists(), first)
        others = [subprocess.Popen(sweep_command(*extra, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=environment()) for extra in ([f"space={space}"], ["resume=true"])]
        for other in others:
            _, refusal = other.communicate(timeout=120)
            assert other.returncode == 2 and refusal.count("\n") == 1, refusal
            assert f"PID {first.pid} on host {socket.gethostname()}" in refusal
        wait_for(table_file.is_file, first)
        while table_file.is_file():  # the driver may replace the table between the two steps: again then
            table_file.unlink()
            try:
                table_file.mkdir()
            except FileExistsError:
                continue
        output, errors = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 2 and errors.count("\n") == 1, errors
    assert errors.startswith(f"error: cannot write {table_file} (Is a directory); the sweep stopped there, no "
                             "trial failed: fix that, then continue with: python -m ness_sweep.run "), errors
    assert "resume=true" in errors and "Traceback" not in output + errors
    assert "error " not in output  # no trial was blamed for it
    assert not [p.name for p in sweep_dir.iterdir() if ".tmp-" in p.name]

    table_file.rmdir()
    resumed = subprocess.run(sweep_command("resume=true", *args), capture_output=True, text=True,
                             env=environment(), timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = pq.read_table(table_file).to_pylist()
    assert len({row["trial_id"] for row in rows}) == len(rows) == 4
    assert {row["status"] for row in rows} == {"TERMINATED"} and all(row["error"] is None for row in rows)
    assert_study_matches_table(sweep_dir)


BROKEN_METHOD = '''
from ness_sweep.methods import Method

class Broken(Method):
    """Raises as its first task begins: every trial fails."""

    def before_task(self, t):
        raise RuntimeError("the method broke on purpose")
'''


def test_a_sweep_whose_every_trial_failed_exits_1_and_says_so(tmp_path):
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "broken.py").write_text(textwrap.dedent(BROKEN_METHOD))
    (folder / "space.yaml").write_text("search: {train.lr: {loguniform: [0.01, 0.1]}}\n"
                                       "fixed: {method: 'broken:Broken', train.epochs: 1}\n"
                                       "sweep: {num_samples: 2, scheduler: fifo, confirm_top: 0}\n")
    done = subprocess.run(sweep_command("space=space.yaml", f"output_dir={tmp_path}", "sweep.name=broken",
                                        "wandb.mode=disabled", "trial.max_failures=0"),
                          cwd=folder, capture_output=True, text=True, env=environment(), timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert said == ["error: every trial failed (2 of 2 ended ERROR; the first: RuntimeError: the method broke on "
                    "purpose); each row's error column holds the whole error"], done.stderr
    failed_lines = [line for line in done.stdout.splitlines() if " error    " in line]
    assert len(failed_lines) == 2 and all("error    RuntimeError: the method broke on purpose (" in line
                                          for line in failed_lines), done.stdout  # as each trial fails
    rows = pq.read_table(tmp_path / "broken" / "results.parquet").to_pylist()
    assert [row["status"] for row in rows] == ["ERROR", "ERROR"]


def test_a_study_that_cannot_be_written_is_the_drivers_failure_not_a_trials(tmp_path):
    """optuna.journal where no file can be: before Tune runs the sweep stops in one line; while it runs the searcher
    records the failure for ``FailedWrites`` (which ends the run) instead of raising into Tune, which would blame
    the trial whose end it was recording."""
    from ness_sweep.sweep import tuner

    plan = planning.build_plan(["space=smoke", "sweep.name=study", f"output_dir={tmp_path}"])
    (tmp_path / "a_file").write_text("not a folder")
    nowhere = str(tmp_path / "a_file" / "optuna.journal")
    with pytest.raises(results.WriteFailed) as caught:
        tuner.make_searcher(plan, nowhere)
    assert str(caught.value).startswith(f"cannot write {nowhere} (") and "\n" not in str(caught.value)

    failed = callbacks.FailedWrites()
    searcher = tuner.make_searcher(plan, str(tmp_path / "optuna.journal"), failed)
    assert searcher.suggest("t0")
    searcher.attach(plan, nowhere, failed)  # as a resume attaches its copy of the file: this one cannot be opened
    searcher.on_trial_complete("t0", {"valid_acc": 50.0, "task": 5})
    assert searcher.suggest("t1") is None  # no new trial; the run ends at its next step
    with pytest.raises(results.WriteFailed) as caught:
        failed.on_step_begin(1, [])
    assert str(caught.value).startswith(f"cannot write {nowhere} (")
