"""The sweep's Optuna study on disk (optuna.journal): it matches the table, survives a resume (and a resume of a
sweep whose study is still the SQLite optuna.db of an earlier ness_sweep), and Optuna reads it."""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import shutil
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

from ness_sweep import leaderboard, run
from ness_sweep.sweep import plan as planning, tuner
from ness_sweep.sweep.study import RERUN_COMMAND, TUNE_TRIAL_ID, check_resumable_study, settle_study

SEARCHED = ("ness.threshold", "train.lr")  # space=smoke


def journal(path: Path) -> optuna.storages.JournalStorage:
    """A journal file opened as the docs tell users to."""
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def study_of(sweep_dir: Path, name: str = "") -> optuna.Study:
    return optuna.load_study(study_name=name or sweep_dir.name, storage=journal(sweep_dir / "optuna.journal"))


def assert_study_matches_table(sweep_dir: Path) -> optuna.Study:
    """The study's COMPLETE trials are exactly the table's TERMINATED search rows: same trial, params and objective,
    a validation number: Optuna never receives a test number (every trial's test ACC differs from it)."""
    study = study_of(sweep_dir)
    metric = "valid_acc"
    complete = {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    rows = {r["trial_id"]: r for r in pq.read_table(sweep_dir / "results.parquet").to_pylist()
            if r["status"] == "TERMINATED" and r["stage"] == "search"}
    assert set(complete) == set(rows) and len(complete) == len(study.get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)))
    for trial_id, trial in complete.items():
        assert trial.value == rows[trial_id][metric] != rows[trial_id]["acc"]
        assert trial.params == {key: rows[trial_id][key] for key in trial.params}
    return study


@pytest.fixture(scope="module")
def asha_sweep(ray_session, tmp_path_factory):
    """Six trials of space=smoke under ASHA, one epoch a task: some finish, some are stopped early."""
    output_dir = tmp_path_factory.mktemp("study")
    plan = planning.build_plan(["space=smoke", "sweep.num_samples=6", "train.epochs=1", "sweep.name=asha",
                                "sweep.confirm_top=0", f"output_dir={output_dir}", "wandb.mode=disabled"])
    tuner.run_sweep(plan, out=lambda line: None)
    return output_dir / "asha"


def test_the_study_holds_every_trial_and_its_complete_ones_are_the_finished_rows(asha_sweep):
    study = assert_study_matches_table(asha_sweep)
    rows = pq.read_table(asha_sweep / "results.parquet").to_pylist()
    assert len(study.trials) == len(rows) == 6
    by_id = {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.trials}
    for row in rows:  # stopped by ASHA or diverged: pruned; raised: failed
        expected = {"TERMINATED": "COMPLETE", "STOPPED": "PRUNED", "DIVERGED": "PRUNED", "ERROR": "FAIL"}[row["status"]]
        assert by_id[row["trial_id"]].state.name == expected
        assert {k: by_id[row["trial_id"]].params[k] for k in SEARCHED} == {k: row[k] for k in SEARCHED}


def test_importances_come_from_the_study_on_disk(asha_sweep):
    study = study_of(asha_sweep)
    importances = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert set(importances) == set(SEARCHED)
    assert sum(importances.values()) == pytest.approx(1.0)


def test_a_resume_with_nothing_left_keeps_the_study_and_table_and_starts_no_ray(asha_sweep, tmp_path, monkeypatch):
    """Resuming the finished sweep from a moved folder: every trial ended, so neither Ray nor Tune starts (one line
    says so); the study stays in the moved folder's optuna.journal, unchanged and still equal to the table."""
    moved = tmp_path / "asha"
    shutil.copytree(asha_sweep, moved)
    before = [(t.number, t.state, t.values, t.intermediate_values) for t in study_of(moved).trials]
    table_before = pq.read_table(moved / "results.parquet")

    def no_ray(*args, **kwargs):
        raise AssertionError("a resume with nothing left to run started Ray")

    monkeypatch.setattr(tuner, "connect_ray", no_ray)
    plan = planning.build_plan(["resume=true", "sweep.name=asha", f"output_dir={tmp_path}", "wandb.mode=disabled"])
    printed = []
    outcome = tuner.run_sweep(plan, out=printed.append)
    assert printed == ["sweep asha: nothing left to run, all 6 trials ended; Ray not started"]
    assert outcome.concurrency == 0 and outcome.table.equals(table_before)
    assert [(t.number, t.state, t.values, t.intermediate_values) for t in study_of(moved).trials] == before
    assert_study_matches_table(moved)


def test_the_study_names_its_objective_and_holds_each_trials_curve_up_to_where_asha_stopped_it(asha_sweep):
    """optuna-dashboard shows "valid_acc", not "Objective 0", and draws each trial's valid_acc_seen per task
    (step: the task's number): a stopped trial's curve ends at the task ASHA stopped it after, and it is PRUNED."""
    study = study_of(asha_sweep)
    assert study.metric_names == ["valid_acc"]
    rows = pq.read_table(asha_sweep / "results.parquet").to_pylist()
    stopped = [row for row in rows if row["status"] == "STOPPED"]
    assert stopped and any(row["status"] == "TERMINATED" for row in rows)  # the fixture exercises both endings
    by_id = {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.trials}
    for row in rows:
        curve = row["valid_acc_seen_per_task"]
        assert by_id[row["trial_id"]].intermediate_values == {task: value for task, value in enumerate(curve, 1)}
    for row in stopped:
        trial = by_id[row["trial_id"]]
        assert trial.state.name == "PRUNED" and max(trial.intermediate_values) == row["task"] < 5


def test_each_study_trial_holds_the_line_that_reruns_its_row(asha_sweep):
    """The rerun line on the dashboard is the one ``ness_sweep.report trial=ID`` prints for the row."""
    table = pq.read_table(asha_sweep / "results.parquet")
    commands = {t.user_attrs[TUNE_TRIAL_ID]: t.user_attrs[RERUN_COMMAND] for t in study_of(asha_sweep).trials}
    rows = table.to_pylist()
    assert set(commands) == {row["trial_id"] for row in rows}
    for row in rows:
        assert commands[row["trial_id"]] == leaderboard.train_command(row, table)
        assert f"train.lr={row['train.lr']!r}" in commands[row["trial_id"]].split()


def folder_bytes(folder: Path) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def garble_a_middle_line(path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[len(lines) // 2] = b'{"op_code": 5, "trial_id\n'
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize("damage", ["missing", "garbled", "garbled_sqlite"])
def test_a_resume_without_a_readable_study_is_refused_in_one_line_before_ray_starts(damage, asha_sweep, tmp_path,
                                                                                     monkeypatch, capsys):
    """garbled_sqlite: no journal, and the SQLite optuna.db of an earlier ness_sweep, which cannot be migrated."""
    moved = tmp_path / "asha"
    shutil.copytree(asha_sweep, moved)
    study_file = moved / "optuna.journal"
    if damage == "garbled":
        garble_a_middle_line(study_file)
    else:
        study_file.unlink()
    if damage == "garbled_sqlite":
        (moved / "optuna.db").write_bytes(b"not a database " * 100)
    before = folder_bytes(moved)
    monkeypatch.setattr(tuner, "connect_ray", lambda *args: pytest.fail("Ray started"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run.main(["resume=true", "sweep.name=asha", f"output_dir={tmp_path}", "wandb.mode=disabled"])
    message = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in message and str(study_file) in message, message
    assert {"missing": "missing", "garbled": "cannot be continued", "garbled_sqlite": "cannot be migrated"}[damage] \
        in message
    assert folder_bytes(moved) == before


def test_a_resume_migrates_an_earlier_versions_sqlite_study_once_and_keeps_it(asha_sweep, tmp_path):
    """A sweep begun before the journal has its study in SQLite (optuna.db): the resume copies it into
    optuna.journal (each trial in its place, with its state, values, curve and attributes; the objective's name),
    says so in one line, keeps optuna.db as it was, and goes on with the journal; a later resume migrates nothing."""
    moved = tmp_path / "asha"
    shutil.copytree(asha_sweep, moved)
    database = f"sqlite:///{moved / 'optuna.db'}"
    optuna.copy_study(from_study_name="asha", from_storage=journal(moved / "optuna.journal"), to_storage=database)
    (moved / "optuna.journal").unlink()
    old = (moved / "optuna.db").read_bytes()
    printed = []
    plan = planning.build_plan(["resume=true", "sweep.name=asha", f"output_dir={tmp_path}", "wandb.mode=disabled"])
    tuner.run_sweep(plan, out=printed.append)
    migrated = [line for line in printed if "optuna.db" in line]
    assert len(migrated) == 1 and f"migrated to {moved / 'optuna.journal'}" in migrated[0], printed
    assert (moved / "optuna.db").read_bytes() == old
    before, after = optuna.load_study(study_name="asha", storage=database), study_of(moved)
    assert after.metric_names == before.metric_names == ["valid_acc"] and after.user_attrs == before.user_attrs
    assert [(t.number, t.state, t.values, t.params, t.intermediate_values, t.user_attrs) for t in after.trials] == \
           [(t.number, t.state, t.values, t.params, t.intermediate_values, t.user_attrs) for t in before.trials]
    assert_study_matches_table(moved)
    again = []
    check_resumable_study(plan, again.append)
    assert again == []


def test_a_journal_whose_last_line_a_kill_cut_short_is_resumed_and_stays_readable(tmp_path):
    """A driver killed while appending leaves the journal's last line incomplete: a resume accepts the journal
    (Optuna reads past that line) and the searcher cuts the line off before it writes; Optuna would append to it,
    garbling both records and the journal for every later reader."""
    plan = plan_for(tmp_path)
    path = tmp_path / "unit" / "optuna.journal"
    path.parent.mkdir()
    searcher = tuner.make_searcher(plan, str(path))
    for i in range(3):
        searcher.suggest(f"t{i}")
    finish(searcher, "t0", 60.0)
    finish(searcher, "t1", 61.0)
    checkpointed = pickle.dumps(searcher)
    finish(searcher, "t2", 62.0)  # the write the kill cuts short
    path.write_bytes(path.read_bytes()[:-10])
    printed = []
    check_resumable_study(plan, printed.append)
    assert printed == []
    restored = pickle.loads(checkpointed)
    restored.attach(plan, str(path))
    finish(restored, "t2", 62.0)  # Tune runs t2 again
    assert restored.suggest("t3")
    states = {t.user_attrs[TUNE_TRIAL_ID]: (t.state.name, t.value) for t in study_of(path.parent).trials}
    assert states == {"t0": ("COMPLETE", 60.0), "t1": ("COMPLETE", 61.0), "t2": ("COMPLETE", 62.0),
                      "t3": ("RUNNING", None)}


def test_rays_own_reader_sees_every_trial(asha_sweep):
    """Tune's JSON logger is on: ExperimentAnalysis reads each trial's result.json."""
    from ray.tune import ExperimentAnalysis

    frame = ExperimentAnalysis(str(asha_sweep)).dataframe()
    rows = pq.read_table(asha_sweep / "results.parquet").to_pylist()
    assert sorted(frame["trial_id"]) == sorted(r["trial_id"] for r in rows)
    finished = {r["trial_id"]: r["acc"] for r in rows if r["status"] == "TERMINATED"}
    assert {t: a for t, a in zip(frame["trial_id"], frame["acc"]) if t in finished} == finished


def plan_for(tmp_path: Path, name: str = "unit"):
    return planning.build_plan(["space=smoke", f"sweep.name={name}", f"output_dir={tmp_path}"])


def finish(searcher, trial_id: str, valid_acc: float) -> None:
    searcher.on_trial_complete(trial_id, {"valid_acc": valid_acc, "task": 5})


def test_the_journal_study_proposes_what_the_in_memory_one_and_rays_optuna_search_did(tmp_path):
    """Records are sacred: moving the study to disk, and off Ray's OptunaSearch (which the sweeps used before),
    changes no proposal: a resumed older sweep goes on as it would have."""
    from ray.tune.search.optuna import OptunaSearch

    plan = plan_for(tmp_path)
    in_memory, on_disk = tuner.make_searcher(plan), tuner.make_searcher(plan, str(tmp_path / "optuna.journal"))
    rays = OptunaSearch(space={key: dist.to_optuna() for key, dist in plan.space.search.items()}, metric="valid_acc",
                        mode="max", seed=plan.cfg.sweep.seed)
    for i in range(12):
        assert in_memory.suggest(f"t{i}") == on_disk.suggest(f"t{i}") == rays.suggest(f"t{i}")
        for searcher in (in_memory, on_disk, rays):
            finish(searcher, f"t{i}", 50.0 + (i * 7) % 11)


def test_a_restored_searcher_reopens_this_runs_file_and_fails_the_trials_it_lost(tmp_path):
    """As after a killed driver: Tune's last checkpoint knew t0..t2 (t0 done); after it the driver asked t3 and
    finished t1, then died. The restored searcher writes the moved copy, never the first path."""
    plan = plan_for(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    searcher = tuner.make_searcher(plan, str(first / "optuna.journal"))
    pickled_at_start = pickle.dumps(searcher)  # as tuner.pkl holds it
    for i in range(3):
        searcher.suggest(f"t{i}")
    finish(searcher, "t0", 60.0)
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.suggest("t3")
    finish(searcher, "t1", 61.0)
    shutil.move(first / "optuna.journal", second / "optuna.journal")

    restored = pickle.loads(pickled_at_start)  # Tuner.restore unpickles tuner.pkl: no connection is made
    restored.attach(plan, str(second / "optuna.journal"))  # as _tuner does, before Tune restores the saved search
    restored.restore(str(tmp_path / "searcher.pkl"))
    finish(restored, "t1", 61.0)  # Tune runs t1 again: the study keeps its first finish
    finish(restored, "t2", 62.0)
    restored.on_trial_complete("t4_never_asked_here", None)
    assert restored.suggest("t5")
    assert not (first / "optuna.journal").exists()
    study = study_of(second, "unit")
    states = {t.user_attrs[TUNE_TRIAL_ID]: (t.state.name, t.value) for t in study.trials}
    assert states == {"t0": ("COMPLETE", 60.0), "t1": ("COMPLETE", 61.0), "t2": ("COMPLETE", 62.0),
                      "t3": ("FAIL", None), "t5": ("RUNNING", None)}


def test_a_failed_trial_that_a_resume_finishes_counts_as_complete(tmp_path):
    searcher = tuner.make_searcher(plan_for(tmp_path), str(tmp_path / "optuna.journal"))
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", error=True)
    # resume_errored ran it again, and it finished
    searcher.on_trial_complete("t0", {"valid_acc": 70.0, "task": 2, "valid_acc_seen_per_task": [72.0, 71.0]})
    study = study_of(tmp_path, "unit")
    assert [(t.state.name, t.value, t.user_attrs[TUNE_TRIAL_ID]) for t in study.trials] == \
           [("FAIL", None, "t0"), ("COMPLETE", 70.0, "t0")]
    assert study.trials[0].params == study.trials[1].params
    assert study.trials[1].intermediate_values == {1: 72.0, 2: 71.0}


def test_finished_rows_the_study_missed_are_recorded_from_the_table_after_the_search(tmp_path):
    """The table is the record: a row that finished while the study did not hear of it (t1 still running in the
    study, t2 failed there) becomes COMPLETE with the row's valid_acc, t2 with its params, attributes and curve;
    t0, complete already, and t3, stopped, stay as they were; one line per repaired trial."""
    plan = plan_for(tmp_path)
    journal_file = str(tmp_path / "optuna.journal")
    searcher = tuner.make_searcher(plan, journal_file)
    for i in range(4):
        searcher.suggest(f"t{i}")
    finish(searcher, "t0", 60.0)
    searcher.on_trial_result("t2", {"task": 1, "valid_acc_seen_per_task": [55.0]})
    searcher.on_trial_complete("t2", error=True)
    searcher.on_trial_complete("t3", {"valid_acc_seen_per_task": [40.0]})  # stopped early: pruned
    rows = [{"trial_id": f"t{i}", "stage": "search", "status": status, "valid_acc": value}
            for i, (status, value) in enumerate([("TERMINATED", 60.0), ("TERMINATED", 61.5), ("TERMINATED", 62.5),
                                                 ("STOPPED", None)])]
    printed = []
    settle_study(plan, journal_file, rows, printed.append)
    study = study_of(tmp_path, "unit")
    complete = {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert {trial_id: t.value for trial_id, t in complete.items()} == {"t0": 60.0, "t1": 61.5, "t2": 62.5}
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert complete["t2"].params == failed.params and complete["t2"].intermediate_values == {1: 55.0}
    assert complete["t2"].user_attrs == failed.user_attrs
    assert [t.state.name for t in study.trials if t.user_attrs[TUNE_TRIAL_ID] == "t3"] == ["PRUNED"]
    assert len(printed) == 2 and all("recorded as COMPLETE from its row" in line for line in printed)
    settle_study(plan, journal_file, rows, printed.append)  # settled: nothing more to record
    assert len(study_of(tmp_path, "unit").trials) == 5 and len(printed) == 2


def test_each_reports_curve_gives_the_study_what_it_lacks(tmp_path):
    """Every report carries the signal's curve so far (valid_acc_seen_per_task: index i is task i + 1; the whole
    history comes in the last report only): each task's value reaches the study once, at step = the task's number,
    also when a restored trial reports its curve from task 1 again; a value that is not finite is left out."""
    searcher = tuner.make_searcher(plan_for(tmp_path), str(tmp_path / "optuna.journal"))
    searcher.suggest("t0")
    searcher.on_trial_result("t0", {"task": 1, "valid_acc_seen_per_task": [50.0]})
    searcher.on_trial_result("t0", {"task": 2, "valid_acc_seen_per_task": [50.0, 48.0]})
    searcher.on_trial_result("t0", {"task": 3, "valid_acc_seen_per_task": [49.0, 48.0, float("nan")]})
    searcher.on_trial_complete("t0", {"valid_acc": 46.5, "task": 4,
                                      "valid_acc_seen_per_task": [49.0, 48.0, 47.0, 46.0]})
    (trial,) = study_of(tmp_path, "unit").trials
    assert trial.intermediate_values == {1: 50.0, 2: 48.0, 3: 47.0, 4: 46.0} and trial.value == 46.5


def test_a_restored_searcher_reopens_its_study_without_a_line_of_optunas(tmp_path):
    """Optuna logs "Using an existing study ..." at INFO (its default level, as in a fresh driver process) when a
    resume reopens the study: that line would land among the sweep's own lines."""
    plan = plan_for(tmp_path)
    searcher = tuner.make_searcher(plan, str(tmp_path / "optuna.journal"))
    searcher.suggest("t0")
    restored = pickle.loads(pickle.dumps(searcher))
    logged, level = io.StringIO(), optuna.logging.get_verbosity()
    handler = logging.StreamHandler(logged)
    logging.getLogger("optuna").addHandler(handler)
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        restored.attach(plan, str(tmp_path / "optuna.journal"))
        assert restored.suggest("t1")
    finally:
        optuna.logging.set_verbosity(level)
        logging.getLogger("optuna").removeHandler(handler)
    assert logged.getvalue() == ""
    assert optuna.logging.get_verbosity() == level


def test_each_methods_study_names_its_method_in_the_rerun_lines(tmp_path):
    """A sweep over methods: each method's study (SWEEP/METHOD) proposes that method's keys, and the rerun line
    of its trials names the method (the Tune config's ``method``, which the method's study does not search)."""
    plan = planning.build_plan(["space=methods", "sweep.num_samples=1", "sweep.name=unit", f"output_dir={tmp_path}"])
    searcher = tuner.make_searcher(plan, str(tmp_path / "optuna.journal"))
    proposed = [searcher.suggest(f"t{i}") for i in range(plan.total_trials)]
    for config in proposed:
        study = study_of(tmp_path, f"unit/{config['method']}")
        assert study.metric_names == ["valid_acc"] and len(study.trials) == 1
        words = study.trials[0].user_attrs[RERUN_COMMAND].split()
        assert words[:3] == ["python", "-m", "ness_sweep.train"] and f"method={config['method']}" in words
        assert {f"{key}={value!r}" for key, value in config.items() if key != "method"} <= set(words)
