"""Live progress: the ETA and the lines as pure functions, the trial's throttled epoch posts, and a small sweep
(local Ray of 2 CPUs) that prints trial starts, tasks, epochs and status lines without changing its table."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from ness_sweep import train
from ness_sweep.sweep import plan as planning
from ness_sweep.sweep.progress import (
    EpochPoster,
    LiveProgress,
    best_so_far,
    epoch_line,
    eta_seconds,
    format_duration,
    remaining_tasks,
    seconds_per_task,
    status_line,
)
from ness_sweep.trainer import EpochProgress

NUM_TASKS = 5  # permuted_digits


# ---- the ETA ---------------------------------------------------------------------------------------
def test_seconds_per_task_pools_every_trials_finished_tasks():
    assert seconds_per_task([(5, 10.0), (2, 4.0)]) == pytest.approx(2.0)  # 14 s over 7 tasks
    assert seconds_per_task([(3, 9.0), (1, 1.0)]) == pytest.approx(2.5)  # not the mean of 3 and 1
    assert seconds_per_task([]) is None and seconds_per_task([(0, 0.0)]) is None


def test_remaining_tasks_counts_unended_trials_and_trials_not_yet_created():
    assert remaining_tasks([2, 0], not_started=3, num_tasks=5) == 3 + 5 + 15
    assert remaining_tasks([], not_started=0, num_tasks=5) == 0


def test_eta_divides_the_budget_by_the_trials_that_can_run_at_once():
    assert eta_seconds(2.0, 23, concurrency=2, unended_trials=5) == pytest.approx(23.0)
    assert eta_seconds(2.0, 3, concurrency=4, unended_trials=1) == pytest.approx(6.0)  # one trial left: no sharing
    assert eta_seconds(None, 23, concurrency=2, unended_trials=5) is None


# ---- the lines -------------------------------------------------------------------------------------
def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 60, 75, 3599, 3600, 7325)] == [
        "0 s", "59 s", "1m00s", "1m15s", "59m59s", "1h00m", "2h02m"]
    assert format_duration(None) == "?"


def test_best_so_far_follows_the_mode_and_skips_unfinished_trials():
    values = [("a", 1.0), ("b", None), ("c", 3.0)]
    assert best_so_far(values, "max") == ("c", 3.0)
    assert best_so_far(values, "min") == ("a", 1.0)
    assert best_so_far([("b", None)], "max") is None


def test_status_line():
    line = status_line(2, 3, 5, 10, [("acc", ("64ce1e9d", 96.534)), ("bwt", None)], 83.0, 130.0)
    assert line == ("status: 2 running, 3 pending, 5 done of 10; best acc 96.53 (64ce1e9d), bwt -; "
                    "1m23s elapsed, ETA 2m10s")


def test_epoch_line_shows_only_an_epoch_of_the_task_in_progress():
    epoch = {"task": 3, "line": "task 3/5 epoch 4/10 loss 0.1 valid 0.2 lr 0.05", "seconds": 4.04, "seed": None}
    assert epoch_line(epoch, tasks_reported=2, num_tasks=5) == "task 3/5 epoch 4/10 loss 0.1 valid 0.2 lr 0.05  (4.0 s)"
    assert epoch_line(epoch, tasks_reported=3, num_tasks=5) == "task 4/5: no epoch finished yet"  # stale
    assert epoch_line(None, tasks_reported=0, num_tasks=5) == "task 1/5: no epoch finished yet"
    assert epoch_line({**epoch, "seed": 7}, 2, 5).startswith("seed 7 task 3/5 epoch 4/10")


def test_status_of_the_driver_callback_from_its_trials(tmp_path):
    plan = planning.build_plan(["space=smoke", "sweep.num_samples=4", f"output_dir={tmp_path}"])
    live = LiveProgress(plan, NUM_TASKS, concurrency=2, out=print)
    trials = [SimpleNamespace(trial_id="a", status="TERMINATED",
                              last_result={"task": 5, "acc_seen": 90.0, "acc": 90.0, "valid_acc": 88.0,
                                          "seconds": 10.0}),
              SimpleNamespace(trial_id="b", status="RUNNING",
                              last_result={"task": 2, "acc_seen": 80.0, "seconds": 4.0}),
              SimpleNamespace(trial_id="c", status="PENDING", last_result={})]
    # 14 s over 7 tasks = 2 s a task; left: 3 (b) + 5 (c) + 5 (a trial not yet created) = 13 tasks, 2 at a time
    assert live.status(trials, live.started + 75) == ("status: 1 running, 2 pending, 1 done of 4; "
                                                      "best valid_acc 88.00 (a); "
                                                      "1m15s elapsed, ETA 13 s")


# ---- the trial's side ------------------------------------------------------------------------------
class FakeBoard:
    def __init__(self):
        self.posts = []
        self.post = SimpleNamespace(remote=lambda trial_id, epoch: self.posts.append((trial_id, epoch)))


def epochs(task, count):
    return [EpochProgress(task, NUM_TASKS, e, count, 1.0 / e, 2.0 / e, 0.05, float(e)) for e in range(1, count + 1)]


def test_a_trial_posts_each_tasks_first_epoch_then_at_most_once_an_interval():
    board = FakeBoard()
    poster = EpochPoster(board, interval_s=1e9, trial_id="t1", seed=None)
    for progress in epochs(1, 3) + epochs(2, 3):
        poster(progress)
    assert [(trial, epoch["task"], epoch["line"]) for trial, epoch in board.posts] == [
        ("t1", 1, epochs(1, 3)[0].line()), ("t1", 2, epochs(2, 3)[0].line())]
    every = FakeBoard()
    poster = EpochPoster(every, interval_s=0.0, trial_id="t1", seed=3)
    for progress in epochs(1, 3):
        poster(progress)
    assert [epoch["seconds"] for _, epoch in every.posts] == [1.0, 2.0, 3.0]
    assert {epoch["seed"] for _, epoch in every.posts} == {3}


def test_the_train_command_prints_epoch_task_losses_and_lr():
    lines = []
    train("train.epochs=2", out=lines.append)
    epoch_lines = [line for line in lines if " epoch " in line]
    assert len(epoch_lines) == 2 * NUM_TASKS
    assert re.fullmatch(r"task 3/5 epoch 2/2 loss \d+\.\d{4} valid \d+\.\d{4} lr \S+", epoch_lines[5])


# ---- a sweep, end to end ---------------------------------------------------------------------------
def sweep_lines(tmp_path, name, *args):
    from ness_sweep.sweep import tuner

    lines = []
    plan = planning.build_plan(["space=smoke", "sweep.num_samples=2", "sweep.scheduler=fifo", "sweep.confirm_top=0",
                                "train.epochs=12",
                                "wandb.mode=disabled", f"sweep.name={name}", f"output_dir={tmp_path}", *args])
    outcome = tuner.run_sweep(plan, out=lines.append)
    return lines, outcome.table


def test_a_sweep_prints_live_progress_and_writes_the_same_table(ray_session, tmp_path):
    lines, table = sweep_lines(tmp_path, "live", "sweep.progress_s=0.2")
    trial_ids = table.column("trial_id").to_pylist()
    assert len(trial_ids) == 2
    for trial_id in trial_ids:
        mine = [line.strip() for line in lines if f" {trial_id}  " in line]
        assert mine[0].startswith(f"{trial_id}  started  ness.threshold=")
        tasks = [line for line in mine
                 if re.fullmatch(rf"{trial_id}  task \d/5  valid_acc_seen \d+\.\d\d  \(\d+\.\d s\)", line)]
        assert [int(line.split()[2][0]) for line in tasks] == list(range(1, NUM_TASKS + 1))
    epoch_pattern = r"(\S+)  task \d/5 epoch \d+/12 loss \d+\.\d{4} valid \d+\.\d{4} lr \S+  \(\d+\.\d s\)"
    epoch_trials = {m.group(1) for m in (re.fullmatch(epoch_pattern, line.strip()) for line in lines) if m}
    assert epoch_trials and epoch_trials <= set(trial_ids)
    statuses = [line for line in lines if line.startswith("status: ")]
    assert statuses and all(re.fullmatch(r"status: \d running, \d pending, \d done of 2; "
                                         r"best valid_acc (-|\d+\.\d\d \(\S+\)); "
                                         r"\S+( s)? elapsed, ETA \S+( s)?", line) for line in statuses)
    assert sum(line.startswith("[") for line in lines) == 2  # one line per finished trial, as before

    quiet_lines, quiet_table = sweep_lines(tmp_path, "quiet", "sweep.progress_s=0")
    assert not any(line.startswith("status: ") or re.fullmatch(epoch_pattern, line.strip()) for line in quiet_lines)
    assert table.schema.equals(quiet_table.schema, check_metadata=False)
    same_configs = {(r["train.lr"], r["ness.threshold"]): r["acc_matrix"] for r in quiet_table.to_pylist()}
    assert {(r["train.lr"], r["ness.threshold"]): r["acc_matrix"] for r in table.to_pylist()} == same_configs
    assert [r["acc_seen_per_task"] and len(r["acc_seen_per_task"]) for r in table.to_pylist()] == [NUM_TASKS] * 2
