"""What keeps a sweep's cost per trial end flat: rows added in files of their own and the table rewritten on a
timer, rows of ended trials built once (a resume keeps them), checkpoints of ended trials removed, and reports
that carry the whole history only once."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from ness_sweep import results
from ness_sweep.sweep import callbacks, checkpoints, lock, plan as planning
from ness_sweep.sweep.dashboards import task_entries


def no_warning(line: str) -> None:
    raise AssertionError(f"unexpected output: {line}")


class FakeTrial:
    """What the table's callbacks read of a Tune trial."""

    def __init__(self, trial_id, acc=None, status="TERMINATED", path=None):
        self.trial_id, self.status, self.path = trial_id, status, path
        self.config = {"ness.threshold": 0.01, "train.lr": 0.05}
        self.last_result = {"task": 5, "acc": acc, "valid_acc": acc} if acc is not None else {"task": 1}
        self.error_file = None

    def get_error(self):
        return None


@pytest.fixture
def claimed_plan(tmp_path):
    plan = planning.build_plan(["space=smoke", "sweep.name=flat", f"output_dir={tmp_path}"])
    with lock.claimed(plan, no_warning):
        yield plan


def table_bytes(plan) -> bytes:
    return (Path(plan.sweep_dir) / "results.parquet").read_bytes()


def test_a_trial_end_adds_a_row_file_and_the_table_is_rewritten_only_when_due(claimed_plan):
    table = callbacks.ResultsTable(claimed_plan)
    trials = [FakeTrial(f"t{i}", status="RUNNING") for i in range(4)]
    for i, trial in enumerate(trials[:3]):
        trial.status, trial.last_result = "TERMINATED", {"task": 5, "acc": 80.0 + i, "valid_acc": 70.0 + i}
        table.on_trial_complete(i, trials, trial)
        if i == 0:
            first = table_bytes(claimed_plan)  # the first end writes the whole table: running trials' rows too
    assert table_bytes(claimed_plan) == first  # not rewritten by the next two ends
    rows_dir = Path(claimed_plan.sweep_dir) / results.SweepFolder.ROWS
    assert len(list(rows_dir.glob("*.parquet"))) == 2
    read = {r["trial_id"]: r for r in results.read_table(claimed_plan.sweep_dir).to_pylist()}
    assert {k: (r["status"], r["acc"]) for k, r in read.items()} == {
        "t0": ("TERMINATED", 80.0), "t1": ("TERMINATED", 81.0), "t2": ("TERMINATED", 82.0), "t3": ("RUNNING", None)}
    assert [r["trial_id"] for r in results.read_table(claimed_plan.sweep_dir).to_pylist()] == ["t0", "t1", "t2", "t3"]
    table.on_experiment_end(trials)  # the stage's end rewrites all, in Tune's order, and removes the row files
    assert [r["trial_id"] for r in results.read_table(claimed_plan.sweep_dir).to_pylist()] == ["t0", "t1", "t2", "t3"]
    assert not list(rows_dir.glob("*.parquet"))
    assert results.read_table(claimed_plan.sweep_dir).column("status").to_pylist()[3] == "UNFINISHED"


def test_rows_record_when_their_trial_started_and_ended(claimed_plan):
    table = callbacks.ResultsTable(claimed_plan)
    trial = FakeTrial("t0", status="RUNNING")
    before = datetime.now(timezone.utc)
    table.on_trial_start(0, [trial], trial)
    trial.status, trial.last_result = "TERMINATED", {"task": 5, "acc": 90.0, "valid_acc": 91.0}
    table.on_trial_complete(1, [trial], trial)
    after = datetime.now(timezone.utc)
    row = results.read_table(claimed_plan.sweep_dir).to_pylist()[0]
    assert before <= row["started_at"] <= row["ended_at"] <= after
    assert row["started_at"].tzinfo is not None and row["ended_at"].utcoffset().total_seconds() == 0


def test_a_resume_keeps_the_rows_of_trials_that_had_ended_and_rebuilds_the_others(claimed_plan):
    first = callbacks.ResultsTable(claimed_plan)
    done, cut = FakeTrial("done", acc=90.0), FakeTrial("cut", status="RUNNING")
    first.on_trial_complete(0, [done, cut], done)
    # the next driver: Tune restored `done` ended and `cut` pending; the table's row of `done` is what it keeps,
    # even where the restored trial's last report would now say otherwise
    done.last_result = {"task": 5, "acc": 12.0, "valid_acc": 12.0}
    cut.status = "PENDING"
    resumed = callbacks.ResultsTable(claimed_plan)
    resumed.on_step_begin(0, [done, cut])
    built = []
    original = resumed.config_cells
    resumed.config_cells = lambda trial: built.append(trial.trial_id) or original(trial)
    cut.status, cut.last_result = "TERMINATED", {"task": 5, "acc": 70.0, "valid_acc": 71.0}
    resumed.on_trial_complete(1, [done, cut], cut)
    rows = {r["trial_id"]: r for r in results.read_table(claimed_plan.sweep_dir).to_pylist()}
    assert rows["done"]["acc"] == 90.0 and rows["cut"]["acc"] == 70.0
    assert built == ["cut"]


def test_a_row_file_left_by_a_kill_is_read_with_the_table_and_the_newest_row_of_a_trial_wins(claimed_plan):
    folder = claimed_plan.folder
    table = callbacks.ResultsTable(claimed_plan)
    trial = FakeTrial("t0", status="RUNNING")
    table.on_trial_complete(0, [trial, FakeTrial("t1", acc=50.0)], FakeTrial("t1", acc=50.0))
    row = table.row(trial, running=True)
    for acc in (60.0, 65.0):  # two rows of one trial, as written one after the other
        results.write_row({**row, "status": "TERMINATED", "acc": acc}, table.schema, folder.filesystem,
                          folder.path(folder.TABLE))
    (Path(claimed_plan.sweep_dir) / results.SweepFolder.ROWS / "x.parquet.tmp-1234").write_bytes(b"cut short")
    read = {r["trial_id"]: r for r in results.read_table(claimed_plan.sweep_dir).to_pylist()}
    assert read["t0"]["acc"] == 65.0 and read["t1"]["acc"] == 50.0
    assert results.sweep_metadata(results.read_table(claimed_plan.sweep_dir))["sweep"] == "flat"


class FakeCheckpoint:
    def __init__(self, path):
        self.path = str(path)


def trial_folder(tmp_path, count: int) -> Path:
    """A trial's folder as Tune lays it out, ``count`` checkpoints with their states and reports."""
    folder = tmp_path / "trial"
    for i in range(count):
        checkpoint = folder / f"checkpoint_{i:06d}"
        checkpoint.mkdir(parents=True)
        (checkpoint / checkpoints.CHECKPOINT_FILE).write_bytes(b"weights")
        (checkpoint / checkpoints.REPORT_FILE).write_text(f'{{"task": {i + 1}}}')
    (folder / "result.json").write_text("{}")
    return folder


def contents(folder: Path) -> dict:
    return {p.name: sorted(c.name for c in p.iterdir()) for p in sorted(folder.iterdir()) if p.is_dir()}


def test_a_trial_keeps_the_states_of_its_two_newest_checkpoints_and_its_last_report_once_ended(claimed_plan, tmp_path):
    folder = trial_folder(tmp_path, 3)
    trial = FakeTrial("t0", status="RUNNING", path=str(folder))
    kept = checkpoints.Checkpoints(claimed_plan)
    for checkpoint in sorted(folder.glob("checkpoint_*")):
        kept.on_checkpoint(0, [trial], trial, FakeCheckpoint(checkpoint))
    both = [checkpoints.CHECKPOINT_FILE, checkpoints.REPORT_FILE]
    # emptied, not removed: Tune's saved state may name any of them, and refuses a restore from a missing one
    assert contents(folder) == {"checkpoint_000000": [], "checkpoint_000001": sorted(both),
                                "checkpoint_000002": sorted(both)}
    kept.on_trial_complete(1, [trial], trial)
    assert contents(folder) == {"checkpoint_000000": [], "checkpoint_000001": [],
                                "checkpoint_000002": [checkpoints.REPORT_FILE]}
    assert (folder / "result.json").exists()


def test_trial_keep_checkpoints_keeps_an_ended_trials_checkpoints(tmp_path):
    plan = planning.build_plan(["space=smoke", "trial.keep_checkpoints=true", f"output_dir={tmp_path}"])
    folder = trial_folder(tmp_path, 2)
    before = contents(folder)
    trial = FakeTrial("t0", path=str(folder))
    checkpoints.Checkpoints(plan).on_trial_complete(0, [trial], trial)
    assert contents(folder) == before


def test_a_report_before_the_last_rebuilds_earlier_tasks_from_its_curves():
    report = {"task": 3, "acc_seen": 80.0, "valid_acc_seen": 81.0, "acc_row": [1.0, 2.0, 3.0],
              "valid_acc_row": [1.5, 2.5, 3.5], "task_diagnostics": {"rank/fc1": 4.0},
              "acc_seen_per_task": [90.0, 85.0, 80.0], "valid_acc_seen_per_task": [91.0, 86.0, 81.0]}
    entries = task_entries(report)
    assert [e["task"] for e in entries] == [1, 2, 3]
    assert [(e["acc_seen"], e["valid_acc_seen"]) for e in entries] == [(90.0, 91.0), (85.0, 86.0), (80.0, 81.0)]
    assert entries[-1]["acc_row"] == [1.0, 2.0, 3.0] and "acc_row" not in entries[0]
    assert task_entries({"task": 2, "diverged": True}) == []
    history = [{"task": 1}, {"task": 2}]
    assert task_entries({**report, "history": history}) is history
