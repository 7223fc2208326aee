"""Sweeps over the baselines: one sweep trains each with per-task diagnostics in every record; a space that
names another method's settings is refused before anything is created; a sweep over several methods holds
each one's settings group and hands every trial only its own. (Each shipped space loads and validates in
tests/test_spaces.py.)"""

import contextlib
import io

import pyarrow.parquet as pq
import pytest
import yaml

from ness_sweep import run
from ness_sweep.config import UserError
from ness_sweep.methods import METHODS
from ness_sweep.sweep import plan as planning

NEW_METHODS = ["gpm", "sgp", "ewc", "lwf"]


def run_command(args):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run.main(args)
    return code, printed.getvalue().splitlines()


def test_a_sweep_over_the_baselines_trains_each_with_its_own_settings_and_diagnostics(ray_session, tmp_path):
    """One sweep searching ``method`` over the four baselines (not over the default method, whose group the
    sweep must then not hold): one study per method, one trial each."""
    space = write_space(tmp_path, "search:\n  method: {choice: [gpm, sgp, ewc, lwf]}\n  train.lr: {choice: [0.05]}\n"
                                  "fixed:\n  train.epochs: 1\n  benchmark: split_digits\n")
    code, lines = run_command([f"space={space}", "sweep.num_samples=1", "sweep.confirm_top=0",
                               "sweep.name=s", f"output_dir={tmp_path / 'out'}"])
    assert code == 0, lines
    rows = pq.read_table(tmp_path / "out" / "s" / "results.parquet").to_pylist()
    assert sorted(r["method"] for r in rows) == sorted(NEW_METHODS) and {r["status"] for r in rows} == {"TERMINATED"}
    for row in rows:
        group = METHODS[row["method"]].group
        assert len(row["diagnostics"]) == 5 and any(dict(task) for task in row["diagnostics"])
        own = [key for key in row if key.partition(".")[0] == group]
        assert own and any(row[key] is not None for key in own)  # its settings are columns, filled in its row
        others = {METHODS[m].group for m in NEW_METHODS} - {group}
        assert all(row[key] is None for key in row if key.partition(".")[0] in others)  # no other method's values
        assert not any(key.startswith("ness.") for key in row)
    best = (tmp_path / "out" / "s" / "best.yaml").read_text()
    assert "# task 2 diagnostics: " in best  # what the best trial measured, above its settings
    settings = yaml.safe_load(best)
    assert set(settings) & {"gpm", "sgp", "ewc", "lwf", "ness"} == {METHODS[settings["method"]].group}


def write_space(tmp_path, text):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    return space


@pytest.mark.parametrize("text,says", [
    ("search:\n  ewc.lambda: {loguniform: [1, 100]}\n",  # the default method is ness
     "search.ewc.lambda: a setting of method=ewc, and this sweep's method is ness"),
    ("search:\n  ness.threshold: {loguniform: [0.001, 0.1]}\nfixed:\n  method: gpm\n",
     "search.ness.threshold: a setting of method=ness, and this sweep's method is gpm"),
    ("search:\n  train.lr: {loguniform: [0.01, 0.1]}\nfixed:\n  method: lwf\n  ewc.gamma: 0.9\n",
     "fixed.ewc.gamma: a setting of method=ewc, and this sweep's method is lwf"),
    ("search:\n  gpm.treshold: {uniform: [0.9, 0.99]}\nfixed:\n  method: gpm\n", "search.gpm.treshold: unknown key"),
    ("search:\n  sgp.scale: {uniform: [-1, 10]}\nfixed:\n  method: sgp\n", "sgp.scale"),
])
def test_a_space_naming_another_methods_settings_is_refused_naming_the_file(text, says, tmp_path):
    space = write_space(tmp_path, text)
    with pytest.raises(UserError) as error:
        planning.build_plan([f"space={space}", f"output_dir={tmp_path / 'out'}"])
    message = str(error.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{space}: ") and says in message, message
    assert not (tmp_path / "out").exists()


def test_another_methods_key_on_the_sweep_command_line_is_refused(tmp_path):
    with pytest.raises(UserError, match="^gpm.threshold: a setting of method=gpm, and this run's method is ness"):
        planning.build_plan(["space=rank_threshold", "gpm.threshold=0.9", f"output_dir={tmp_path}"])


def test_a_sweep_over_methods_holds_each_group_and_gives_each_trial_its_own(tmp_path):
    space = write_space(tmp_path, "search:\n  method: {choice: [ness, gpm, finetune]}\n  train.lr: {choice: [0.05]}\n"
                                  "  gpm.threshold: {uniform: [0.9, 0.99]}\n"
                                  "  ness.threshold: {loguniform: [0.001, 0.1]}\n")
    plan = planning.build_plan([f"space={space}", f"output_dir={tmp_path / 'out'}"])
    assert plan.method_groups() == {"ness": "ness", "gpm": "gpm", "finetune": None}
    settings = plan.run_settings()
    assert "ness" in settings and "gpm" in settings
    params = {"gpm.threshold": 0.95, "ness.threshold": 0.01}
    gpm = planning.trial_run_config(settings, {**params, "method": "gpm"})
    assert gpm.gpm.threshold == 0.95 and "ness" not in gpm
    ness = planning.trial_run_config(settings, {**params, "method": "ness"})
    assert ness.ness.threshold == 0.01 and "gpm" not in ness
    finetune = planning.trial_run_config(settings, {**params, "method": "finetune"})
    assert "ness" not in finetune and "gpm" not in finetune


def test_a_sweep_searching_only_other_methods_holds_only_their_groups(tmp_path):
    """Searching method=[gpm, ewc] leaves the default method (ness) out: no trial reads its group."""
    space = write_space(tmp_path, "search:\n  method: {choice: [gpm, ewc]}\n  ewc.lambda: {loguniform: [1, 100]}\n"
                                  "  gpm.threshold: {uniform: [0.9, 0.99]}\n")
    plan = planning.build_plan([f"space={space}", f"output_dir={tmp_path / 'out'}"])
    settings = plan.run_settings()
    assert {"gpm", "ewc"} <= set(settings) and "ness" not in settings
    with pytest.raises(UserError, match="^ness.rank: a setting of method=ness, and this run's method is gpm or ewc"):
        planning.build_plan([f"space={space}", "ness.rank=3", f"output_dir={tmp_path / 'out'}"])


def test_a_method_with_nothing_of_its_own_to_search_is_refused(tmp_path):
    """One study per method: a method whose study has no key would run its defaults sweep.num_samples times."""
    space = write_space(tmp_path, "search:\n  method: {choice: [gpm, finetune]}\n"
                                  "  gpm.threshold: {uniform: [0.9, 0.99]}\n")
    with pytest.raises(UserError, match="search.method: finetune would search nothing"):
        planning.build_plan([f"space={space}", f"output_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()
