"""Search-space files: the shipped ones load and convert; every malformed case is one line, exit 2, nothing created."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from datetime import datetime
from pathlib import Path

import optuna
import pytest

from ness_sweep import run
from ness_sweep.config import UserError
from ness_sweep.sweep import plan as planning, space as spaces, tuner

REQUIRED_SPACES = {"rank_threshold", "threshold", "lr", "smoke"}


def plan_for(tmp_path, *args):
    return planning.build_plan([*args, f"output_dir={tmp_path / 'out'}"])


def write_space(tmp_path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def test_required_spaces_are_shipped():
    assert REQUIRED_SPACES <= set(spaces.known_spaces())


@pytest.mark.parametrize("name", sorted(spaces.known_spaces()))
def test_every_shipped_space_loads_and_converts(name, tmp_path):
    plan = plan_for(tmp_path, f"space={name}")
    assert plan.space.description and plan.space.search
    searcher = tuner.make_searcher(plan)
    for i in range(5 if not plan.by_method else 2 * len(plan.space.search["method"].values)):
        params = searcher.suggest(f"trial{i}")
        own = set(plan.method_space(params["method"])) | {"method"} if plan.by_method else set(plan.space.search)
        assert set(params) == own
        for key, value in params.items():
            dist = plan.space.search[key]
            if dist.kind == "choice":
                assert value in dist.values
            else:
                low, high = dist.values
                assert low <= value <= high
                assert isinstance(value, int) == (dist.kind == "int")
        planning.trial_run_config(plan.run_settings(), params)  # every sample is a valid run config
    assert not (tmp_path / "out").exists()


def test_rank_threshold_searches_threshold_rank_fraction_and_lr(tmp_path):
    search = plan_for(tmp_path, "space=rank_threshold").space.search
    assert search["ness.threshold"].kind == "loguniform"
    low, high = search["ness.threshold"].values
    assert 1e-5 <= low <= 1e-3 and 1e-2 <= high <= 1.0
    assert search["ness.rank"].kind == "uniform"
    assert all(isinstance(v, float) and 0 < v <= 1 for v in search["ness.rank"].values)
    assert search["train.lr"].kind == "loguniform"
    assert isinstance(search["ness.rank"].to_optuna(), optuna.distributions.FloatDistribution)


def test_threshold_and_lr_spaces_search_their_knobs(tmp_path):
    assert set(plan_for(tmp_path, "space=threshold").space.search) == {"ness.threshold", "train.lr"}
    lr = plan_for(tmp_path, "space=lr")
    assert set(lr.space.search) == {"train.lr", "train.weight_decay"}
    assert lr.cfg.method == "ness" and lr.cfg.ness.threshold is not None


def test_smoke_is_small(tmp_path):
    plan = plan_for(tmp_path, "space=smoke")
    assert plan.num_samples <= 6 and plan.cfg.train.epochs <= 3


def test_precedence_schema_then_space_then_command_line(tmp_path):
    plan = plan_for(tmp_path, "space=smoke")
    assert plan.cfg.train.epochs == 2  # the space's fixed value beats the schema's default (20)
    assert plan.num_samples == 4 and plan.metrics == ["valid_acc"] and plan.modes == ["max"]
    plan = plan_for(tmp_path, "space=smoke", "train.epochs=3", "sweep.num_samples=7", "train.lr=0.1")
    assert plan.cfg.train.epochs == 3 and plan.num_samples == 7
    assert "train.lr" not in plan.space.search and plan.cfg.train.lr == 0.1  # fixed on the command line


def test_command_line_metric_brings_its_own_mode(tmp_path):
    plan = plan_for(tmp_path, "space=smoke", "sweep.metric=valid_forgetting")
    assert plan.modes == ["min"] and plan.scheduler == "asha" and plan.signal == "valid_acc_seen"
    plan = plan_for(tmp_path, "space=smoke", "sweep.metric=[valid_acc,valid_bwt]")
    assert plan.modes == ["max", "max"] and plan.scheduler == "fifo" and not plan.selected_on_test


def test_selecting_on_test_needs_the_opt_in_and_then_asha_watches_test_too(tmp_path):
    plan = plan_for(tmp_path, "space=smoke", "sweep.metric=acc", "sweep.select_on_test=true")
    assert plan.metrics == ["acc"] and plan.selected_on_test and plan.signal == "acc_seen"
    plan = plan_for(tmp_path, "space=smoke", "sweep.select_on_test=true")  # the opt-in alone: the test twin
    assert plan.metrics == ["acc"] and plan.selected_on_test


def test_the_confirmation_seeds_follow_every_seed_the_search_could_use(tmp_path):
    assert plan_for(tmp_path, "space=smoke").confirm_seeds == [1, 2, 3]
    assert plan_for(tmp_path, "space=smoke", "trial.seeds=[4,9,2]", "sweep.confirm_seeds=2").confirm_seeds == [10, 11]
    path = write_space(tmp_path, "search:\n  train.lr: {choice: [0.01, 0.1]}\n  seed: {int: [30, 40]}\n")
    assert plan_for(tmp_path, f"space={path}").confirm_seeds == [41, 42, 43]


def test_a_sweep_over_methods_gives_each_method_its_own_study_and_equal_turns(tmp_path):
    plan = plan_for(tmp_path, "space=methods", "sweep.num_samples=2")
    methods = list(plan.space.search["method"].values)
    assert plan.by_method and plan.total_trials == 2 * len(methods) and plan.scheduler == "fifo"
    searcher = tuner.make_searcher(plan)
    proposed = [searcher.suggest(f"t{i}") for i in range(plan.total_trials)]
    assert [p["method"] for p in proposed] == methods * 2  # taking turns, in the space's order
    assert searcher.suggest("one-too-many") == "FINISHED"
    for params in proposed:  # each study searches its method's own keys and the shared ones only
        assert {key.partition(".")[0] for key in params} <= {"method", "train", plan.method_groups()[params["method"]]}


def test_a_users_space_file_by_path(tmp_path):
    path = write_space(tmp_path, "search:\n  train.lr: {choice: [0.01, 0.1]}\n  ness.rank: {int: [4, 32]}\n"
                                 "fixed: {train.epochs: 1}\n")
    plan = plan_for(tmp_path, f"space={path}")
    assert plan.space.search["ness.rank"].to_optuna() == optuna.distributions.IntDistribution(4, 32)
    assert plan.cfg.train.epochs == 1 and plan.num_samples == planning.DEFAULT_NUM_SAMPLES


MALFORMED = [
    # (file text, what the one-line message must name)
    ("search: {train.lr: {loguniform: [0.1, 0.01]}}", ["search.train.lr", "low 0.1 > high 0.01"]),
    ("search: {train.lr: {gaussian: [0.1, 0.01]}}",
     ["search.train.lr", "unknown distribution 'gaussian'", "loguniform"]),
    ("search: {train.lrate: {loguniform: [0.01, 0.1]}}", ["search.train.lrate", "unknown key"]),
    ("fixed: {train.epochz: 3}\nsearch: {train.lr: {uniform: [0.01, 0.1]}}", ["fixed.train.epochz", "unknown key"]),
    ("search: {train.lr: 0.1}", ["search.train.lr", "one distribution"]),
    ("search: {train.lr: {loguniform: [0, 0.1]}}", ["search.train.lr", "0 < low"]),
    ("search: {train.lr: {uniform: [0.01]}}", ["search.train.lr", "two numbers"]),
    ("search: {train.epochs: {int: [1.5, 4]}}", ["search.train.epochs", "two integers"]),
    ("search: {ness.rank: {uniform: [0.05, 1.5]}}", ["search.ness.rank", "1.5", "fraction"]),
    ("search: {train.momentum: {uniform: [0.5, 1.0]}}", ["search.train.momentum", "[0, 1)"]),
    ("search: {ness.rank: {choice: [8, 0.5]}}", ["search.ness.rank", "share one type"]),
    ("search: {train.epochs: {uniform: [1, 4]}}", ["search.train.epochs"]),
    ("searhc: {train.lr: {uniform: [0.01, 0.1]}}", ["unknown section 'searhc'"]),
    ("search: {}", ["search: must map at least one key"]),
    ("search: [train.lr]", ["search: must map at least one key"]),
    ("search: {train.lr: {uniform: [0.01, 0.1]}}\nsweep: {num_sample: 3}", ["sweep", "num_sample", "unknown key"]),
    ("search: {train.lr: {uniform: [0.01, 0.1]}", ["not valid YAML"]),
    ("search: {train.lr: {uniform: [0.01, 0.1]}}\nfixed: {train: {lr: 0.5}}", ["train.lr", "both searched and fixed"]),
    ("search: {train.lr: {uniform: [0.01, 0.1]}}\nfixed: {seeds: [1, 2]}", ["fixed.seeds", "trial.seeds=[...]"]),
    ("search: {train.lr: {uniform: [0.01, 0.1]}}\nfixed: {output: r.json}", ["fixed.output", "output_dir"]),
]


@pytest.mark.parametrize("text,named", MALFORMED)
def test_malformed_space_is_one_line_naming_the_entry(text, named, tmp_path):
    path = write_space(tmp_path, text)
    with pytest.raises(UserError) as error:
        plan_for(tmp_path, f"space={path}")
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    for part in named:
        assert part in message, message
    assert not (tmp_path / "out").exists()


def test_a_searched_stream_key_is_counted_not_listed(tmp_path):
    """A sweep loads one stream per value of a searched stream-shaping key (seed); their number is checked before
    any is listed: planning over two million seeds allocates no list of them (MemoryError for 2**32)."""
    path = write_space(tmp_path, "search: {seed: {int: [0, 1999999]}}\nsweep: {confirm_top: 0}")
    with pytest.raises(UserError):  # the imports and caches of a first plan are not what is measured
        plan_for(tmp_path, f"space={path}")
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"\(seed\) give 2000000 task streams; a sweep holds at most 16"):
            plan_for(tmp_path, f"space={path}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB"  # the list alone would hold 2 million ints: over 70 MB
    path = write_space(tmp_path, "search: {seed: {int: [0, 4294967295]}}\nsweep: {confirm_top: 0}")
    with pytest.raises(UserError, match=r"\(seed\) give 4294967296 task streams"):  # safe now: nothing is listed
        plan_for(tmp_path, f"space={path}")


def test_unknown_space_lists_the_known_ones(tmp_path, capsys):
    assert run.main(["space=nope", f"output_dir={tmp_path / 'out'}"]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "space=nope" in message
    assert all(name in message for name in REQUIRED_SPACES)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,named", [
    (["space=smoke", "train.epochz=3"], "train.epochz"),
    (["space=smoke", "sweep.metric=loss"], "sweep.metric=loss"),
    (["space=smoke", "sweep.metric=[valid_acc,valid_bwt]", "sweep.mode=[max]"], "sweep.mode"),
    (["space=smoke", "sweep.metric=acc"], "sweep.metric=acc: a test metric; selecting on the test set reports the "
                                          "best of noisy draws, so it needs the opt-in sweep.select_on_test=true"),
    (["space=smoke", "sweep.metric=[valid_acc,bwt]"], "sweep.select_on_test=true"),
    (["space=smoke", "sweep.select_on_test=true", "sweep.metric=valid_acc"], "sweep.select_on_test=true: the "
                                                                             "objectives (valid_acc) are validation"),
    (["space=smoke", "sweep.select_on_test=maybe"], "sweep.select_on_test"),
    (["space=smoke", "sweep.confirm_top=-1"], "sweep.confirm_top=-1: must be >= 0"),
    (["space=smoke", "sweep.confirm_top=two"], "sweep.confirm_top"),
    (["space=smoke", "sweep.confirm_seeds=0"], "sweep.confirm_seeds=0: must be >= 1"),
    (["space=smoke", "seed=4294967294"], "sweep.confirm_seeds=3: the confirmation's fresh seeds would pass"),
    (["space=smoke", "train.eval_batch_size=1"], "train.eval_batch_size=1: must be >= 2"),
    (["space=smoke", "trial.cpu=64"], "trial.cpu=64"),
    (["space=smoke", "trial.gpu=0.25"], "trial.gpu=0.25"),
    (["train.lr=0.1"], "space: required"),
])
def test_bad_command_line_exits_2_and_creates_nothing(args, named, tmp_path, capsys):
    assert run.main([*args, f"output_dir={tmp_path / 'out'}"]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and named in message, message
    assert not (tmp_path / "out").exists()


def test_exit_code_2_from_the_real_command(tmp_path):
    path = write_space(tmp_path, "search: {train.lr: {loguniform: [0.1, 0.01]}}")
    done = subprocess.run([sys.executable, "-m", "ness_sweep.run", f"space={path}", f"output_dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "low 0.1 > high 0.01" in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_existing_sweep_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "results.parquet").write_bytes(b"first sweep")
    assert run.main(["space=smoke", "sweep.name=mine", f"output_dir={out}"]) == 2
    message = capsys.readouterr().err
    assert "sweep.name=mine" in message and "exists" in message and "resume=true" in message
    assert (out / "mine" / "results.parquet").read_bytes() == b"first sweep"
    now = datetime(2030, 1, 2, 3, 4, 5)
    (out / "smoke-20300102-030405").mkdir()
    assert planning.build_plan(["space=smoke", f"output_dir={out}"], now=now).name == "smoke-20300102-030405-2"


def test_spaces_ship_inside_the_installed_package(tmp_path):
    """A wheel carries search_spaces/ as package ness_sweep.search_spaces; load_space finds them there."""
    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "source"  # a copy: building leaves build/ and egg-info behind
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "ness_sweep", "search_spaces"):
        if (root / part).is_dir():
            shutil.copytree(root / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif (root / part).exists():
            shutil.copy(root / part, source / part)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel, = (tmp_path / "wheel").glob("ness_sweep-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
    probe = ("import ness_sweep.sweep.space as s, sys; "
             "assert s.__file__.startswith(sys.argv[1]), s.__file__; "
             "print(s.shipped_space_dir()); print(sorted(s.known_spaces())); print(s.load_space('smoke').source)")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "site")], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    where, names, _ = done.stdout.splitlines()
    assert str(tmp_path / "site" / "ness_sweep" / "search_spaces") in where
    assert REQUIRED_SPACES <= set(eval(names))


def test_distribution_bounds_are_math_not_strings(tmp_path):
    path = write_space(tmp_path, "search: {ness.threshold: {loguniform: [1e-4, 1e-1]}}")
    dist = plan_for(tmp_path, f"space={path}").space.search["ness.threshold"]
    assert dist.values == (1e-4, 1e-1) and math.isclose(dist.to_optuna().low, 1e-4)
