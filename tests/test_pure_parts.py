"""The pure parts of a sweep, without Ray: the Pareto front and ranking, the rerun line, the layering of settings,
the results table's column types, a run-time schema through cloudpickle, and the flatten / unflatten / argument
helpers. Expected values are worked out by hand in each test."""

import os
import pickle
import shlex

import pyarrow as pa
import pytest
import ray.cloudpickle
from omegaconf import OmegaConf

from ness_sweep import results, selection
from ness_sweep.config import (
    RunConfig,
    SweepConfig,
    UserError,
    argument_value,
    arguments,
    flatten,
    layered,
    merge_onto,
    parse_overrides,
    resolved,
    unflatten,
    with_groups,
)
from ness_sweep.leaderboard import train_command
from ness_sweep.methods import load_run_config, method_groups
from ness_sweep.sweep import plan as planning
from ness_sweep.sweep.columns import column_types


def rows(*metrics):
    return [{"trial_id": f"t{i}", "acc": acc, "bwt": bwt} for i, (acc, bwt) in enumerate(metrics)]


def test_pareto_front_keeps_exactly_the_undominated_rows_best_first():
    table = rows((90, -5), (80, -1), (85, -3), (70, -4), (90, -6), (None, 0), (60, float("nan")), (80, -1))
    # t3 (70, -4) is dominated by t2 (85, -3); t4 (90, -6) by t0; t5 and t6 have no finite metrics;
    # t1 and t7 tie (80, -1): neither dominates the other, both stay.
    front = selection.pareto_front(table, ["acc", "bwt"], ["max", "max"])
    assert [r["trial_id"] for r in front] == ["t0", "t2", "t1", "t7"]


def test_pareto_front_with_a_minimised_objective():
    table = [{"trial_id": "a", "acc": 90, "forgetting": 4}, {"trial_id": "b", "acc": 88, "forgetting": 1},
             {"trial_id": "c", "acc": 87, "forgetting": 2}, {"trial_id": "d", "acc": 91, "forgetting": 4}]
    front = selection.pareto_front(table, ["acc", "forgetting"], ["max", "min"])
    assert [r["trial_id"] for r in front] == ["d", "b"]  # a loses to d on acc; c to b on both


def test_ranked_orders_finished_rows_by_the_mode():
    table = rows((90, -5), (None, 0), (95, -1), (85, -3))
    assert [r["trial_id"] for r in selection.ranked(table, "acc", "max")] == ["t2", "t0", "t3"]
    assert [r["trial_id"] for r in selection.ranked(table, "bwt", "min")] == ["t0", "t3", "t2", "t1"]


def tiny_table(row: dict, searched):
    columns = [("benchmark", pa.string()), ("threads", pa.int64()), ("device", pa.string()),
               ("train.lr", pa.float64()), ("train.epochs", pa.int64()), ("ness.rank", pa.float64()),
               ("task_order", pa.string())]
    schema = results.make_schema(columns, {"sweep": "s", "space": "x", "metrics": ["acc"], "modes": ["max"],
                                           "searched": searched, "config_columns": [name for name, _ in columns]})
    full = {field.name: row.get(field.name) for field in schema}
    return pa.Table.from_pylist([full], schema=schema)


def test_the_rerun_line_names_searched_and_changed_keys_seed_threads_and_device():
    row = {"trial_id": "abc", "status": "TERMINATED", "benchmark": "permuted_digits", "threads": 1, "device": "cpu",
           "train.lr": 0.1234567890123, "train.epochs": 20, "ness.rank": None, "task_order": "seeded", "seeds": [7]}
    line = train_command(row, tiny_table(row, ["train.lr"]))
    # train.epochs=20 and ness.rank=null are the schema's defaults and unsearched: left out
    assert line == ("python -m ness_sweep.train benchmark=permuted_digits threads=1 device=cpu "
                    "train.lr=0.1234567890123 task_order=seeded seed=7")
    cfg = load_run_config(line.split()[3:])  # the line parses back to the row's settings, every digit kept
    assert (cfg.train.lr, cfg.seed, cfg.task_order, cfg.threads) == (0.1234567890123, 7, "seeded", 1)


def test_several_seeds_are_rerun_as_a_list():
    row = {"trial_id": "abc", "benchmark": "split_digits", "threads": 2, "device": "cpu", "train.lr": 0.05,
           "train.epochs": 20, "ness.rank": 0.5, "task_order": "fixed", "seeds": [1, 2, 3]}
    line = train_command(row, tiny_table(row, ["ness.rank"]))
    assert line.endswith("threads=2 device=cpu ness.rank=0.5 'seeds=[1,2,3]'")  # quoted for the shell
    assert load_run_config(shlex.split(line)[3:]).seeds == [1, 2, 3]


def test_layering_is_schema_then_base_then_preset_then_command_line(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("train:\n  lr: 0.3\n  epochs: 7\n")
    base = [{"train": {"lr": 0.2, "epochs": 5, "batch_size": 32}}]
    cfg = layered(RunConfig, parse_overrides([f"preset={preset}", "train.epochs=9"]), method_groups, base)
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.train.momentum) == (0.3, 9, 32, 0.9)


def test_column_types_follow_the_schema_and_the_space(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("search:\n  ness.rank: {choice: [4, 8]}\n  train.lr: {loguniform: [0.01, 0.1]}\n")
    plan = planning.build_plan([f"space={space}", f"output_dir={tmp_path / 'out'}"])
    types = dict(column_types(plan.run_settings(), plan.space, plan.run_schema()))
    assert types["ness.rank"] == pa.int64()  # free-typed key: the type its choices share (a count)
    assert types["train.lr"] == pa.float64() and types["train.epochs"] == pa.int64()
    assert types["benchmark"] == pa.string() and "seed" not in types and "output" not in types


def test_mixed_choice_types_for_a_free_typed_key_are_refused(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("search:\n  ness.rank: {choice: [4, 0.5]}\n")
    with pytest.raises(UserError, match="choice options must share one type"):
        planning.build_plan([f"space={space}", f"output_dir={tmp_path / 'out'}"])


def test_flatten_unflatten_and_arguments_round_trip():
    tree = {"train": {"lr": 0.1, "epochs": 3}, "seeds": [1, 2], "ness": {"rank": None}, "dry_run": True}
    assert flatten(tree) == {"train.lr": 0.1, "train.epochs": 3, "seeds": [1, 2], "ness.rank": None, "dry_run": True}
    assert unflatten(flatten(tree)) == tree
    assert arguments(tree) == ["train.lr=0.1", "train.epochs=3", "seeds=[1,2]", "ness.rank=null", "dry_run=true"]
    cfg = layered(SweepConfig, parse_overrides(arguments(tree)), groups=method_groups)
    assert flatten(resolved(cfg))["train.lr"] == 0.1 and cfg.seeds == [1, 2] and cfg.ness.rank is None
    assert argument_value(1 / 3) == "0.3333333333333333"
    with pytest.raises(UserError, match="train.lr.x: lr is a value"):
        unflatten({"train.lr": 1, "train.lr.x": 2})


def test_a_uri_sweep_folder_stages_local_only_writers_and_copies_them_back(tmp_path, monkeypatch):
    """Optuna's journal and W&B write local files only: for a folder on another file system (here a SubTreeFileSystem,
    which is not a LocalFileSystem) each entry is written in a temporary folder and copied back at the end."""
    import pyarrow.fs as pafs

    remote = tmp_path / "remote"
    (remote / "root" / "s").mkdir(parents=True)
    (remote / "root" / "s" / "optuna.journal").write_text("from the last run")
    subtree = pafs.SubTreeFileSystem(str(remote), pafs.LocalFileSystem())
    monkeypatch.setattr(results, "filesystem_and_path", lambda location: (subtree, "root"))
    folder = results.SweepFolder("bucket://anywhere", "s")
    with folder.staged_locally(folder.OPTUNA, fetch=True) as study, \
            folder.staged_locally(folder.WANDB, fetch=False) as wandb_dir:
        assert not study.startswith(str(remote)) and open(study).read() == "from the last run"  # fetched
        open(study, "w").write("this run")
        os.makedirs(os.path.join(wandb_dir, "run-1"))
        open(os.path.join(wandb_dir, "run-1", "run.wandb"), "w").write("records")
    assert (remote / "root" / "s" / "optuna.journal").read_text() == "this run"
    assert (remote / "root" / "s" / "wandb" / "run-1" / "run.wandb").read_text() == "records"
    assert not os.path.exists(study)  # the staging folder is gone


def test_a_local_sweep_folder_is_written_in_place(tmp_path):
    folder = results.SweepFolder(str(tmp_path), "s")
    with folder.staged_locally(folder.OPTUNA, fetch=True) as study:
        assert study == str(tmp_path / "s" / "optuna.journal")


def test_a_schema_with_method_groups_survives_cloudpickle_in_this_process():
    """Tune pickles the callbacks holding a sweep's config; the run-time schema class must come back intact."""
    schema = with_groups(SweepConfig, method_groups(["ness", "gpm"])[0])
    cfg = merge_onto(schema, {"gpm": {"threshold": 0.9}})
    again = pickle.loads(ray.cloudpickle.dumps(cfg))
    assert again.gpm.threshold == 0.9 and again.ness.rank == cfg.ness.rank
    assert OmegaConf.structured(schema).train.lr == SweepConfig().train.lr  # every default still a default
