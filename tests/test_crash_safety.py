"""Crash safety with real kills: a trial process killed mid-stream, and a sweep driver killed outright."""

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from test_optuna_study import assert_study_matches_table

import ness_sweep
from ness_sweep import leaderboard, results
from ness_sweep.sweep import checkpoints, dashboards


def sweep_command(*args):
    return [sys.executable, "-m", "ness_sweep.run", *args]


def environment():
    """A sweep process of its own: loopback Ray, offline W&B, and its own W&B service (WANDB_SERVICE, set by an
    earlier test's W&B in this process, would make every sweep share one service, and a killed driver's runs
    would stay open in it)."""
    inherited = {key: value for key, value in os.environ.items() if key != "WANDB_SERVICE"}
    return {**inherited, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "WANDB_MODE": "offline"}


def rows_while_running(results_file):
    """The table as the running sweep last wrote it. Read through one open file: pyarrow's reader by path stats
    the file and opens it again, and a rename between the two (the driver replaces the table atomically) makes
    it read the new file with the old size."""
    return results.read_table(str(results_file)).to_pylist() if results_file.exists() else []


def wait_for(condition, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, "the sweep ended before the test could interrupt it"
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the sweep")


def trial_worker_pids(marker: str):
    """Processes of this test's Ray workers running a Tune trial (Ray titles them ray::ImplicitFunc.train; other
    tests' sweeps may run beside it)."""
    pids = []
    for pid in processes_carrying("NESS_SWEEP_TEST_RUN", marker):
        try:
            if (Path("/proc") / str(pid) / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc.train"):
                pids.append(pid)
        except OSError:
            continue
    return pids


def test_a_killed_trial_restarts_from_its_last_task_and_matches_an_uninterrupted_twin(tmp_path):
    space = tmp_path / "twins.yaml"
    # Two trials of one configuration: the interrupted one must end exactly like its twin.
    space.write_text("search: {train.lr: {choice: [0.05]}}\n"
                     "fixed: {train.epochs: 20}\n"
                     "sweep: {num_samples: 2, scheduler: fifo, max_concurrent: 2, confirm_top: 0}\n")
    sweep_dir = tmp_path / "twins"
    marked = {**environment(), "NESS_SWEEP_TEST_RUN": str(tmp_path)}  # Ray's processes inherit it
    process = subprocess.Popen(sweep_command(f"space={space}", "sweep.name=twins", f"output_dir={tmp_path}",
                                             "wandb.mode=disabled"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=marked)
    try:
        def both_checkpointed():
            return (sweep_dir.is_dir() and len(list(sweep_dir.glob("*/checkpoint_*"))) >= 2
                    and trial_worker_pids(str(tmp_path)))

        wait_for(both_checkpointed, process)
        os.kill(trial_worker_pids(str(tmp_path))[0], signal.SIGKILL)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "Traceback" not in output  # Ray's report of the dead worker stays out of the sweep's output
    rows = pq.read_table(sweep_dir / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["TERMINATED", "TERMINATED"], output
    restarted = [r for r in rows if r["started_at_task"] > 0]
    assert len(restarted) == 1  # exactly the killed trial resumed, from a finished task, not task 1
    assert 1 <= restarted[0]["started_at_task"] < 5
    assert rows[0]["acc_matrix"] == rows[1]["acc_matrix"]
    assert rows[0]["acc"] == rows[1]["acc"]


def wandb_history(run_dir: Path) -> list:
    """The tasks an offline run's history holds, read with wandb's own reader (``wandb leet inspect``)."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [r["history"]["item"]["task"] for r in records if r["type"] == "history"]


def processes_carrying(name: str, value: str) -> list:
    """Processes whose environment has ``name=value``."""
    found, entry = [], f"{name}={value}".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if entry in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def kill_the_sweep(process: subprocess.Popen, marker: str) -> None:
    """Kill the driver, the local Ray it started, and every Ray worker of the run (a trial's worker is not in the
    driver's process group: left alone it would notice the dead Ray only seconds later, and may write one more
    checkpoint meanwhile), as a machine that loses power would; return once none of them remains."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        remaining = processes_carrying("NESS_SWEEP_TEST_RUN", marker)
        if not remaining:
            return
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise AssertionError(f"processes of the killed sweep remain: {remaining}")


def known_to_tune(sweep_dir: Path) -> dict:
    """Trial id -> tasks done, as Tune's newest experiment state records them (what a resume restores)."""
    states = sorted(sweep_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        trials = json.loads(states[-1].read_text())["trial_data"]
    except ValueError:  # being written
        return {}
    known = {}
    for data, meta in trials:
        last = json.loads(meta)["last_result"]
        known[json.loads(data)["trial_id"]] = (json.loads(last) if isinstance(last, str) else last).get("task", 0)
    return known


def newest_checkpoint_of_an_unfinished_trial(sweep_dir: Path, finished: set):
    """The newest of two checkpoints holding states of a trial that is unfinished and that Tune's saved state
    knows: a resume continues that trial from a checkpoint in its folder."""
    for trial_id in known_to_tune(sweep_dir):
        held = sorted(p.parent for p in (sweep_dir / trial_id).glob(f"checkpoint_*/{checkpoints.CHECKPOINT_FILE}"))
        if trial_id not in finished and len(held) >= 2:
            return held[-1]
    return None


def test_a_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    """Kill the driver, garble an unfinished trial's newest checkpoint, refuse a changed resume, then resume
    with the sweep's name alone: finished rows kept, every row reruns exactly, one W&B run per trial."""
    space = tmp_path / "lrs.yaml"
    space.write_text("search: {train.lr: {loguniform: [0.01, 0.1]}}\n"
                     "fixed: {train.epochs: 3}\n"
                     "sweep: {num_samples: 5, scheduler: fifo, max_concurrent: 1, confirm_top: 0}\n")
    sweep_dir = tmp_path / "crash"
    results_file = sweep_dir / "results.parquet"
    args = [f"space={space}", "sweep.name=crash", f"output_dir={tmp_path}"]  # W&B offline
    # Ray's processes inherit the marker. Tune saves its experiment state at most every 10 s by default: saved
    # every half second here, the trial running when the driver is killed is one the saved state knows (what the
    # test needs) also on a machine where a whole trial takes less than 10 s.
    marked = {**environment(), "NESS_SWEEP_TEST_RUN": str(tmp_path), "TUNE_GLOBAL_CHECKPOINT_S": "0.5"}
    process = subprocess.Popen(sweep_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=marked, start_new_session=True)

    def finished_rows():
        return [r for r in rows_while_running(results_file) if r["status"] == "TERMINATED"]

    def ready():
        done = finished_rows()
        return len(done) >= 2 and newest_checkpoint_of_an_unfinished_trial(sweep_dir, {r["trial_id"] for r in done})

    try:
        wait_for(ready, process)
    finally:
        kill_the_sweep(process, str(tmp_path))
    before = {r["trial_id"]: r for r in finished_rows()}
    assert 2 <= len(before) < 5
    garbled = newest_checkpoint_of_an_unfinished_trial(sweep_dir, set(before))
    (garbled / "state.pt").write_bytes(b"not a checkpoint" * 64)
    table_bytes = results_file.read_bytes()

    refused = subprocess.run(sweep_command("sweep.name=crash", f"output_dir={tmp_path}", "resume=true",
                                           "train.epochs=4"), capture_output=True, text=True, env=environment())
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "train.epochs" in refused.stderr and results_file.read_bytes() == table_bytes

    resumed = subprocess.run(sweep_command("sweep.name=crash", f"output_dir={tmp_path}", "resume=true"),
                             capture_output=True, text=True, env=environment(), timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = pq.read_table(results_file).to_pylist()
    assert len(rows) == 5 and len({r["trial_id"] for r in rows}) == 5
    assert all(r["status"] == "TERMINATED" for r in rows)
    for trial_id, row in before.items():  # kept as they were: training again would add to their seconds
        after = next(r for r in rows if r["trial_id"] == trial_id)
        assert (after["acc"], after["seconds"], after["acc_matrix"]) == (row["acc"], row["seconds"], row["acc_matrix"])
    assert_study_matches_table(sweep_dir)  # optuna.journal: its COMPLETE trials are the finished rows, still
    recovered = next(r for r in rows if r["trial_id"] == garbled.parent.name)
    assert (f"{garbled.name} unreadable" in recovered["recovery"]
            and "continued from checkpoint_" in recovered["recovery"])

    table = pq.read_table(results_file)
    for row in rows:  # every row, resumed or not, reruns to its numbers (its command's arguments, in this process)
        line = leaderboard.train_command(row, table)
        assert ness_sweep.train(*shlex.split(line)[3:], out=None).acc == row["acc"], line

    runs = sorted((sweep_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == len(rows) + 1  # one per trial, one summary: nothing left over from the killed driver
    for run_dir in runs:
        if not run_dir.name.endswith(dashboards.run_id("crash", "summary")):
            assert wandb_history(run_dir) == [1, 2, 3, 4, 5], run_dir.name


def test_a_driver_killed_during_the_confirmation_resumes_it_without_rerunning_a_confirmed_row(tmp_path):
    """Kill the driver once a rerun has finished and before the last has: the resume finishes the confirmation,
    keeps the search's rows and the finished reruns exactly (training again would add to their seconds), and
    runs each fresh seed once."""
    space = tmp_path / "confirm.yaml"
    space.write_text("search: {train.lr: {loguniform: [0.01, 0.1]}}\n"
                     "fixed: {train.epochs: 5}\n"
                     "sweep: {num_samples: 2, scheduler: fifo, max_concurrent: 1, confirm_top: 1, confirm_seeds: 3}\n")
    results_file = tmp_path / "confirming" / "results.parquet"
    args = [f"space={space}", "sweep.name=confirming", f"output_dir={tmp_path}", "wandb.mode=disabled"]
    marked = {**environment(), "NESS_SWEEP_TEST_RUN": str(tmp_path)}
    process = subprocess.Popen(sweep_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=marked, start_new_session=True)

    def reruns_done():
        return [r for r in rows_while_running(results_file) if r["stage"] == "confirm" and r["status"] == "TERMINATED"]

    try:
        wait_for(lambda: reruns_done(), process)
    finally:
        kill_the_sweep(process, str(tmp_path))
    before = {r["trial_id"]: (r["stage"], r["acc"], r["seconds"])
              for r in rows_while_running(results_file) if r["status"] == "TERMINATED"}
    assert 1 <= sum(stage == "confirm" for stage, _, _ in before.values()) < 3

    resumed = subprocess.run(sweep_command("sweep.name=confirming", f"output_dir={tmp_path}", "resume=true"),
                             capture_output=True, text=True, env=environment(), timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = results.read_table(str(results_file)).to_pylist()
    assert {t: v for t, v in ((r["trial_id"], (r["stage"], r["acc"], r["seconds"])) for r in after)
            if t in before} == before
    search = [r for r in after if r["stage"] == "search"]
    reruns = [r for r in after if r["stage"] == "confirm"]
    assert len(search) == 2 and sorted(r["seeds"][0] for r in reruns) == [1, 2, 3]
    assert {r["status"] for r in after} == {"TERMINATED"} and len({r["confirms"] for r in reruns}) == 1
    assert any(line.startswith("winner by confirmed valid_acc: ") for line in resumed.stdout.splitlines())
