"""Crash safety with real kills: a trial process killed mid-stream, and a sweep driver killed outright."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq


def sweep_command(*args):
    return [sys.executable, "-m", "ness_sweep.run", "wandb.mode=disabled", *args]


def environment():
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "WANDB_MODE": "offline"}


def wait_for(condition, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, "the sweep ended before the test could interrupt it"
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the sweep")


def trial_worker_pids():
    """Processes of Ray workers running a Tune trial (Ray titles them ray::ImplicitFunc.train)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc.train"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_killed_trial_restarts_from_its_last_task_and_matches_an_uninterrupted_twin(tmp_path):
    space = tmp_path / "twins.yaml"
    # Two trials of one configuration: the interrupted one must end exactly like its twin.
    space.write_text("search: {train.lr: {choice: [0.05]}}\n"
                     "fixed: {train.epochs: 20}\n"
                     "sweep: {num_samples: 2, scheduler: fifo, max_concurrent: 2}\n")
    sweep_dir = tmp_path / "twins"
    process = subprocess.Popen(sweep_command(f"space={space}", "sweep.name=twins", f"output_dir={tmp_path}"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment())
    try:
        def both_checkpointed():
            return sweep_dir.is_dir() and len(list(sweep_dir.glob("*/checkpoint_*"))) >= 2 and trial_worker_pids()

        wait_for(both_checkpointed, process)
        os.kill(trial_worker_pids()[0], signal.SIGKILL)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    rows = pq.read_table(sweep_dir / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["TERMINATED", "TERMINATED"], output
    restarted = [r for r in rows if r["started_at_task"] > 0]
    assert len(restarted) == 1  # exactly the killed trial resumed, from a finished task, not task 1
    assert 1 <= restarted[0]["started_at_task"] < 5
    assert rows[0]["acc_matrix"] == rows[1]["acc_matrix"]
    assert rows[0]["acc"] == rows[1]["acc"]


def test_a_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    space = tmp_path / "lrs.yaml"
    space.write_text("search: {train.lr: {loguniform: [0.01, 0.1]}}\n"
                     "fixed: {train.epochs: 2}\n"
                     "sweep: {num_samples: 6, scheduler: fifo, max_concurrent: 1}\n")
    sweep_dir = tmp_path / "crash"
    results_file = sweep_dir / "results.parquet"
    args = [f"space={space}", "sweep.name=crash", f"output_dir={tmp_path}"]
    process = subprocess.Popen(sweep_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment(), start_new_session=True)

    def finished_rows():
        if not results_file.exists():
            return []
        return [r for r in pq.read_table(results_file).to_pylist() if r["status"] == "TERMINATED"]

    try:
        wait_for(lambda: len(finished_rows()) >= 2, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the local Ray it started, at once
        process.wait()
    before = {r["trial_id"]: r for r in finished_rows()}
    assert 2 <= len(before) < 6

    resumed = subprocess.run(sweep_command(*args, "resume=true"), capture_output=True, text=True,
                             env=environment(), timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = pq.read_table(results_file).to_pylist()
    assert len(rows) == 6 and len({r["trial_id"] for r in rows}) == 6
    assert all(r["status"] == "TERMINATED" for r in rows)
    for trial_id, row in before.items():  # kept as they were: training again would add to their seconds
        after = next(r for r in rows if r["trial_id"] == trial_id)
        assert (after["acc"], after["seconds"], after["acc_matrix"]) == (row["acc"], row["seconds"], row["acc_matrix"])
