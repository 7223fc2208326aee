"""Sweep records that are always true: every row reruns to its numbers, resume keeps the plan, bad input
never starts work, an unreadable checkpoint is passed over."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf
from ray import tune

from ness_sweep import leaderboard, report, run, train
from ness_sweep.benchmarks import check_stream, stream_for
from ness_sweep.methods import load_run_config
from ness_sweep.results import SweepFolder
from ness_sweep.sweep import callbacks, checkpoints, plan as planning, trial as trials


def run_command(args):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run.main(args)
    return code, printed.getvalue().splitlines()


def rerun_acc(line: str, tmp_path: Path) -> float:
    """The ACC that a printed ``python -m ness_sweep.train ...`` line gives, run in this process."""
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "ness_sweep.train"], line
    output = tmp_path / "rerun.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main([*words[3:], f"output={output}"]) == 0
    return json.loads(output.read_text())["acc"]


STREAM_SPACE = """\
description: searches keys that shape the task stream, besides the learning rate
search:
  train.lr: {loguniform: [0.02, 0.1]}
  task_order: {choice: [fixed, seeded]}
  train.valid_fraction: {choice: [0.05, 0.1, 0.2]}
  seed: {choice: [0, 1]}
fixed: {train.epochs: 1}
sweep: {num_samples: 4, scheduler: fifo, confirm_top: 0}
"""


@pytest.fixture(scope="module")
def streams_swept(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("streams")
    space = out / "streams.yaml"
    space.write_text(STREAM_SPACE)
    code, lines = run_command([f"space={space}", "sweep.name=streams", f"output_dir={out}", "wandb.mode=disabled"])
    assert code == 0, lines
    table = pq.read_table(out / "streams" / "results.parquet")
    return {"table": table, "rows": table.to_pylist(), "dir": out / "streams", "lines": lines}


def test_every_row_reruns_to_its_acc_with_its_own_stream(streams_swept, tmp_path):
    rows, table = streams_swept["rows"], streams_swept["table"]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"TERMINATED"}
    shaped = {(r["task_order"], r["train.valid_fraction"], r["seeds"][0]) for r in rows}
    assert len(shaped) > 1  # the trials did train on different streams
    assert all(r["seeds"] == [r["seed"]] and r["threads"] == 1 for r in rows)
    for row in rows:
        assert rerun_acc(leaderboard.train_command(row, table), tmp_path) == row["acc"], row["trial_id"]


def test_the_plan_is_stored_readable_with_the_command_line(streams_swept):
    record = OmegaConf.to_container(OmegaConf.load(streams_swept["dir"] / SweepFolder.PLAN))
    assert record["command_line"][1:] == ["sweep.name=streams", f"output_dir={streams_swept['dir'].parent}",
                                          "wandb.mode=disabled"]
    assert record["config"]["train"]["epochs"] == 1 and record["num_samples"] == 4
    assert record["space"]["search"]["task_order"] == {"choice": ["fixed", "seeded"]}
    assert record["seeds"] is None  # the space searches the seed: each trial runs its own


def test_resume_with_a_changed_key_is_refused_and_touches_nothing(streams_swept, capsys):
    out = streams_swept["dir"].parent
    table_file = streams_swept["dir"] / "results.parquet"
    before = table_file.read_bytes()
    listing = sorted(p.name for p in streams_swept["dir"].iterdir())
    for changed, named in ((["train.epochs=3"], "train.epochs"), (["sweep.num_samples=8"], "sweep.num_samples"),
                           (["space=smoke"], "space"), (["train.lr_min=0", "seed=3"], "train.lr_min, seed")):
        assert run.main(["sweep.name=streams", f"output_dir={out}", "resume=true", *changed]) == 2
        message = capsys.readouterr().err.strip()
        assert "\n" not in message and named in message and SweepFolder.PLAN in message, message
    assert table_file.read_bytes() == before
    assert sorted(p.name for p in streams_swept["dir"].iterdir()) == listing


def test_a_resume_may_repeat_the_plan_or_change_only_what_cannot_change_results(streams_swept, tmp_path):
    out = streams_swept["dir"].parent
    plan = planning.build_plan(["sweep.name=streams", f"output_dir={out}", "resume=true", "sweep.max_concurrent=1",
                             "wandb.mode=offline", "train.epochs=1", f"space={out / 'streams.yaml'}"])
    stored = OmegaConf.to_container(OmegaConf.load(streams_swept["dir"] / SweepFolder.PLAN))
    record = plan.record()
    assert record["config"]["sweep"]["max_concurrent"] == 1 and record["config"]["wandb"]["mode"] == "offline"
    for key in ("space", "metrics", "modes", "scheduler", "num_samples", "seeds"):
        assert record[key] == stored[key], key
    assert record["config"]["train"] == stored["config"]["train"]


@pytest.mark.parametrize("kind,values", [("uniform", "[0.05, 0.2]"), ("loguniform", "[0.05, 0.2]")])
def test_a_continuous_search_over_a_stream_key_is_refused(kind, values, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(f"search: {{train.valid_fraction: {{{kind}: {values}}}}}\n")
    assert run.main([f"space={space}", f"output_dir={tmp_path / 'out'}"]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "train.valid_fraction" in message and "choice" in message, message
    assert not (tmp_path / "out").exists()


def test_too_many_streams_are_refused(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("search: {seed: {int: [0, 99]}, train.lr: {loguniform: [0.01, 0.1]}}\n")
    assert run.main([f"space={space}", f"output_dir={tmp_path / 'out'}"]) == 2
    message = capsys.readouterr().err.strip()
    assert "100 task streams" in message and str(planning.MAX_STREAMS) in message, message


def test_a_stream_made_from_other_settings_is_refused():
    cfg = load_run_config(["train.valid_fraction=0.2"])
    stream = stream_for(cfg, seed=0)
    check_stream(stream, cfg, 0)
    with pytest.raises(RuntimeError, match="train.valid_fraction=0.1"):
        check_stream(stream, load_run_config([]), 0)
    with pytest.raises(RuntimeError, match="seed=1"):
        check_stream(stream, cfg, 1)


@pytest.mark.parametrize("args,named", [
    (["output_dir=/proc/x"], "output_dir=/proc/x"),
    (["sweep.name=" + "n" * 300], "sweep.name"),
    (["ray.address=127.0.0.1:1"], "ray.address=127.0.0.1:1"),
])
def test_bad_locations_are_refused_before_anything_starts(args, named, tmp_path, capsys):
    code = run.main(["space=smoke", *args]
                    + ([] if args[0].startswith("output_dir") else [f"output_dir={tmp_path / 'o'}"]))
    assert code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and named in message, message
    assert not (tmp_path / "o").exists() and not Path("/proc/x").exists()


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("mine")
    assert run.main(["space=smoke", f"output_dir={target}"]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "is a file" in message, message
    assert target.read_text() == "mine"


@pytest.mark.parametrize("spec", ["{uniform: [0.01, .inf]}", "{loguniform: [.nan, 0.1]}", "{choice: [0.1, .inf]}"])
def test_non_finite_numbers_in_a_space_are_refused(spec, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(f"search: {{ness.threshold: {spec}}}\n")
    assert run.main([f"space={space}", f"output_dir={tmp_path / 'out'}"]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "search.ness.threshold" in message and "finite" in message, message
    assert not (tmp_path / "out").exists()


def saved_checkpoints(tmp_path: Path, count: int) -> list:
    """``count`` checkpoints of one real trial state, as Tune lays them out; returns their folders."""
    cfg = load_run_config(["train.epochs=1"])
    seed_run = trials.SeedTrainer(cfg, 0, stream_for(cfg, 0))
    folders = []
    for index in range(count):
        seed_run.step()
        folder = tmp_path / f"checkpoint_{index:06d}"
        folder.mkdir()
        torch.save([seed_run.state_dict()], folder / checkpoints.CHECKPOINT_FILE)
        folders.append(folder)
    return folders


def test_an_unreadable_checkpoint_falls_back_to_the_one_before(tmp_path):
    older, newest = saved_checkpoints(tmp_path, 2)
    (newest / checkpoints.CHECKPOINT_FILE).write_bytes(b"\x80garbage" * 100)
    restored = checkpoints.load_checkpoint(tune.Checkpoint.from_directory(str(newest)))
    assert restored.states[0]["trainer"]["next_task"] == 1  # the older one: after task 1
    assert "checkpoint_000001 unreadable" in restored.recovery
    assert restored.recovery.endswith("continued from checkpoint_000000")


def test_a_truncated_checkpoint_with_none_before_starts_afresh(tmp_path):
    only, = saved_checkpoints(tmp_path, 1)
    path = only / checkpoints.CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:1000])
    restored = checkpoints.load_checkpoint(tune.Checkpoint.from_directory(str(only)))
    assert restored.states is None and restored.ended is None
    assert "checkpoint_000000 unreadable" in restored.recovery and restored.recovery.endswith("started afresh")


def test_the_newest_checkpoint_wins_even_when_tune_hands_back_an_older_one(tmp_path):
    older, newest = saved_checkpoints(tmp_path, 2)
    for given in (older, newest):  # Tune's experiment state may lag behind what the trial wrote
        restored = checkpoints.load_checkpoint(tune.Checkpoint.from_directory(str(given)))
        assert restored.states[0]["trainer"]["next_task"] == 2 and restored.recovery is None


def test_emptied_checkpoints_are_passed_over_and_a_report_alone_means_the_trial_ended(tmp_path):
    first, second, third = saved_checkpoints(tmp_path, 3)
    for emptied in (first, second):  # what the driver leaves of older checkpoints: Tune may still name them
        (emptied / checkpoints.CHECKPOINT_FILE).unlink()
    restored = checkpoints.load_checkpoint(tune.Checkpoint.from_directory(str(first)))
    assert restored.states[0]["trainer"]["next_task"] == 3 and restored.recovery is None
    (third / checkpoints.REPORT_FILE).write_text('{"task": 3, "acc": 88.5}')
    (third / checkpoints.CHECKPOINT_FILE).unlink()  # the trial ended: its states removed, its report kept
    restored = checkpoints.load_checkpoint(tune.Checkpoint.from_directory(str(second)))
    assert restored.ended == {"task": 3, "acc": 88.5} and restored.states is None


def test_a_preset_best_yaml_holds_threads_and_device(streams_swept):
    best = report.write_best_config(streams_swept["table"], str(streams_swept["dir"]))
    cfg = load_run_config([f"preset={best}"])
    top = leaderboard.best_rows(streams_swept["table"])[0]
    assert cfg.threads == top["threads"] == 1 and cfg.device == top["device"] == "cpu"
    assert cfg.seed == top["seeds"][0] and cfg.task_order == top["task_order"]


class FailedTrial:
    """What the sweep's callbacks read of a Tune trial whose worker died."""

    trial_id, status, last_result, config = "abc_00000", "ERROR", {"task": 2}, {"train.lr": 0.05}

    @staticmethod
    def get_error():
        return RuntimeError("Traceback (most recent call last):\n" + "  File x, line 1\n" * 38
                            + "ray.exceptions.ActorDiedError: The actor died unexpectedly")


def test_a_trial_error_is_one_line_in_the_output_and_whole_in_the_row(tmp_path):
    plan = planning.build_plan(["space=smoke", f"output_dir={tmp_path}"])
    printed = []
    callbacks.ProgressLines(plan, 5, printed.append).on_trial_error(0, [FailedTrial], FailedTrial)
    assert len(printed) == 1 and "ActorDiedError: The actor died unexpectedly" in printed[0]
    assert "Traceback" not in printed[0]
    table = callbacks.ResultsTable(plan)
    table.statuses[FailedTrial.trial_id] = "ERROR"
    row = table.row(FailedTrial, running=False)
    assert row["status"] == "ERROR" and row["error"].count("\n") == 39 and row["error"].startswith("Traceback")


def test_report_prints_the_rerun_line_of_any_row(streams_swept, capsys, tmp_path):
    row = streams_swept["rows"][-1]
    assert report.main([str(streams_swept["dir"]), f"trial={row['trial_id']}"]) == 0
    line = capsys.readouterr().out.strip()
    assert rerun_acc(line, tmp_path) == row["acc"]
    assert report.main([str(streams_swept["dir"]), "trial=nope"]) == 2
    assert "trial=nope" in capsys.readouterr().err
