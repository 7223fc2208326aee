"""Sweeps over the baselines: each shipped space sweeps its method with per-task diagnostics in every record;
a space that names another method's settings is refused before anything is created; a sweep over several
methods holds each one's settings group and hands every trial only its own."""

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


@pytest.mark.parametrize("method", NEW_METHODS)
def test_each_methods_space_sweeps_it_with_diagnostics_in_every_record(method, ray_session, tmp_path):
    args = [f"space={method}", "sweep.num_samples=2", "sweep.scheduler=fifo", "train.epochs=1",
            "benchmark=split_digits", "sweep.name=s", f"output_dir={tmp_path}"]
    code, lines = run_command(args)
    assert code == 0, lines
    rows = pq.read_table(tmp_path / "s" / "results.parquet").to_pylist()
    group = METHODS[method].group
    assert len(rows) == 2 and all(r["status"] == "TERMINATED" and r["method"] == method for r in rows)
    for row in rows:
        assert len(row["diagnostics"]) == 5 and any(dict(task) for task in row["diagnostics"])
        assert any(key.startswith(f"{group}.") for key in row)  # its settings are columns
        assert not any(key.startswith("ness.") for key in row)  # and no other method's
    best = (tmp_path / "s" / "best.yaml").read_text()
    assert "# task 2 diagnostics: " in best  # what the best trial measured, above its settings
    settings = yaml.safe_load(best)
    assert settings["method"] == method and group in settings and "ness" not in settings


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
    space = write_space(tmp_path, "search:\n  method: {choice: [ness, gpm, finetune]}\n"
                                  "  gpm.threshold: {uniform: [0.9, 0.99]}\n  ness.threshold: {loguniform: [0.001, 0.1]}\n")
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
