"""``python -m ness_sweep.report`` and ``dry_run=true``: leaderboard cells against hand-built tables (± std,
0.00, the random-search line, several sweeps in one table, sweeps of other benchmarks), report.html, trial IDs by
a unique start, a stopped trial's rerun line, one sweep however spelt, damaged tables refused in one line, and a
dry run that creates nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ness_sweep import leaderboard, report, results
from ness_sweep.optuna_journal import TPE_STARTUP_TRIALS
from tests.test_plots import TRIALS, make_rows, make_sweep

TWENTY = [(f"t{i:02d}", "TERMINATED", 3) for i in range(20)]


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def board_lines(sweep_dir):
    return leaderboard.leaderboard(results.read_table(str(sweep_dir))).splitlines()


def test_several_seeds_show_mean_and_std_and_zero_reads_0_00(tmp_path):
    rows = make_rows()
    best = max((r for r in rows if r["acc"] is not None), key=lambda r: r["acc"])
    best.update(acc=96.4, acc_std=0.314, bwt=-8.881784197001252e-16, bwt_std=0.0, seeds=[1, 2])
    lines = board_lines(make_sweep(tmp_path, rows))
    first = next(line for line in lines if line.split()[:2] == ["1", best["trial_id"]])
    assert "96.40 ± 0.31" in first and "0.00 ± 0.00" in first and "-0.00" not in first
    assert "e-16" not in "\n".join(lines)


def test_the_random_search_line_is_there_for_8_trials_only(tmp_path):
    small = board_lines(make_sweep(tmp_path / "small", make_rows(TRIALS[:8])))
    large = board_lines(make_sweep(tmp_path / "large", make_rows(TWENTY)))
    assert any("random search" in line and str(TPE_STARTUP_TRIALS) in line for line in small[:2])
    assert not any("random search" in line for line in large)


def renamed_sweep(root, rows, name, **kwargs):
    """make_sweep's folder under another sweep name (the name lives in the table's metadata)."""
    sweep = make_sweep(root, rows, study_trials=False, **kwargs)
    table = results.read_table(str(sweep))
    meta = dict(results.sweep_metadata(table), sweep=name)
    schema = results.make_schema([(c, table.schema.field(c).type) for c in meta["config_columns"]], meta)
    results.write_table(table.to_pylist(), schema, results.pafs.LocalFileSystem(), str(sweep / "results.parquet"))
    return sweep


def test_two_sweeps_rank_together_with_a_sweep_column(tmp_path, capsys):
    a = renamed_sweep(tmp_path / "a", make_rows(seed=1), "alpha")
    b = renamed_sweep(tmp_path / "b", make_rows(seed=2), "beta")
    assert report.main([str(a), str(b), "top=30"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line.split() for line in lines if "trial_id" in line)
    assert header[:3] == ["#", "sweep", "trial_id"]
    table_rows = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    every = [(r["acc"], name) for name, d in (("alpha", a), ("beta", b))
             for r in results.read_table(str(d)).to_pylist() if r["acc"] is not None]
    expected = sorted(every, reverse=True)
    assert [(float(r[3]), r[1]) for r in table_rows] == [(round(acc, 2), name) for acc, name in expected]
    assert not (a / "report.html").exists() and not (b / "report.html").exists()


def test_sweeps_with_other_metrics_are_refused_in_one_line(tmp_path, capsys):
    a = renamed_sweep(tmp_path / "a", make_rows(), "alpha")
    b = renamed_sweep(tmp_path / "b", make_rows(), "beta", metric_names=("acc", "bwt"))
    assert report.main([str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "beta" in err[0] and "differ" in err[0]


def test_report_dir_writes_report_html(tmp_path, capsys):
    sweep = make_sweep(tmp_path, make_rows())
    assert report.main([str(sweep)]) == 0
    assert f"report written to {sweep / 'report.html'}" in capsys.readouterr().out
    assert "<html>" in (sweep / "report.html").read_text()


def test_an_unwritable_page_keeps_the_leaderboard(tmp_path, capsys, monkeypatch):
    sweep = make_sweep(tmp_path, make_rows())
    monkeypatch.setattr("ness_sweep.report_page.write_html", lambda where: (_ for _ in ()).throw(OSError("read-only")))
    assert report.main([str(sweep)]) == 0
    captured = capsys.readouterr()
    assert "rerun the best configuration:" in captured.out
    assert captured.err.strip().splitlines() == [f"warning: {sweep}/report.html not written: read-only"]


@pytest.mark.parametrize("args,named", [(["{empty}"], "results.parquet"), (["{sweep}", "colour=red"], "colour=red"),
                                        (["{sweep}", "--fast"], "--fast"), (["{sweep}", "top=2", "trial=x"], "trial")])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(args, named, tmp_path, capsys):
    sweep, empty = make_sweep(tmp_path, make_rows()), tmp_path / "empty"
    empty.mkdir()
    before = listing(tmp_path)
    assert report.main([a.format(sweep=sweep, empty=empty) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0]
    assert listing(tmp_path) == before


DRY_RUN = """
import sys
from ness_sweep.sweep.__main__ import main
code = main(sys.argv[1:])
print("RAY_LOADED", "ray" in sys.modules, "wandb" in sys.modules)
sys.exit(code)
"""


def dry_run(*args):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-c", DRY_RUN, *args], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(__file__)))


def test_dry_run_prints_every_searched_key_and_creates_nothing_without_ray(tmp_path):
    before = listing(tmp_path)
    done = dry_run("space=rank_threshold", "dry_run=true", "trial.cpu=0.5", f"output_dir={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for key, kind in (("ness.threshold", "loguniform"), ("ness.rank", "uniform"), ("train.lr", "loguniform")):
        assert any(line.split()[:2] == [key, kind] for line in out.splitlines())
    assert "trial.cpu=0.5" in out and "trials at once" in out and str(tmp_path / "out") in out
    assert "train.epochs=" in out and "benchmark=permuted_digits" in out
    assert "RAY_LOADED False False" in out
    assert listing(tmp_path) == before


def test_dry_run_resume_prints_the_stored_plan(tmp_path):
    from ness_sweep.sweep import plan as planning

    plan = planning.build_plan(["space=smoke", "sweep.name=kept", "train.epochs=3", f"output_dir={tmp_path}"])
    plan.folder.filesystem.create_dir(plan.folder.path(), recursive=True)
    planning.write_plan(plan)
    before = listing(tmp_path)
    done = dry_run("dry_run=true", "resume=true", "sweep.name=kept", f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert "train.epochs=3" in done.stdout and "plan.yaml" in done.stdout and "no trial recorded" in done.stdout
    assert listing(tmp_path) == before


# ---- the report command's input: trial IDs, folders, tables --------------------------------------------------

def rerun_output(sweep, trial, capsys):
    code = report.main([str(sweep), f"trial={trial}"])
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err.strip().splitlines()


def test_a_unique_start_of_a_trial_id_names_the_trial(tmp_path, capsys):
    sweep = make_sweep(tmp_path, make_rows())
    table = results.read_table(str(sweep))
    t10 = next(r for r in table.to_pylist() if r["trial_id"] == "t10")
    code, out, _ = rerun_output(sweep, "t1", capsys)  # only t10 starts so
    assert code == 0 and out == [leaderboard.train_command(t10, table)]
    code, out, err = rerun_output(sweep, "t0", capsys)
    assert code == 2 and out == [] and len(err) == 1
    assert "t00, t01, t02, t03, t04, t05, t06, t07, t08, t09" in err[0] and "give more" in err[0]


def test_a_stopped_trials_rerun_line_says_how_the_full_run_differs_from_its_row(tmp_path, capsys):
    rows = make_rows()
    stopped = next(r for r in rows if r["status"] == "STOPPED" and r["task"] == 2)
    sweep = make_sweep(tmp_path, rows)
    code, out, _ = rerun_output(sweep, stopped["trial_id"], capsys)
    assert code == 0 and len(out) == 2 and out[1].startswith("python -m ness_sweep.train ")
    seen = stopped["acc_seen_per_task"][-1]
    assert out[0] == (f"# trial {stopped['trial_id']} STOPPED (stopped early by the scheduler) after task 2 of 3: "
                      f"the full run trains all 3 tasks; its row holds the first 2 (acc_seen {seen:.2f}: the "
                      "rerun's 'task 2/' line prints them as mean and validation)")
    finished = next(r for r in rows if r["status"] == "TERMINATED")
    assert len(rerun_output(sweep, finished["trial_id"], capsys)[1]) == 1  # a finished row: the command alone


def test_sweeps_of_different_benchmarks_get_a_column_and_one_warning(tmp_path, capsys):
    other = make_rows(seed=2)
    for row in other:
        row["benchmark"] = "split_mnist1d"
    a = renamed_sweep(tmp_path / "a", make_rows(seed=1), "alpha")
    b = renamed_sweep(tmp_path / "b", other, "beta")
    assert report.main([str(a), str(b), "top=30"]) == 0
    lines = capsys.readouterr().out.splitlines()
    warnings = [line for line in lines if "warning" in line]
    assert warnings == ["warning: these sweeps differ in benchmark (alpha: permuted_digits; beta: split_mnist1d): "
                        "compare a row's numbers only with rows of the same benchmark"]
    header = next(line.split() for line in lines if "trial_id" in line)
    assert header[:4] == ["#", "sweep", "trial_id", "benchmark"]
    for line in (line.split() for line in lines if line.split() and line.split()[0].isdigit()):
        assert line[3] == {"alpha": "permuted_digits", "beta": "split_mnist1d"}[line[1]]
    assert report.main([str(a), str(renamed_sweep(tmp_path / "c", make_rows(seed=3), "gamma"))]) == 0
    assert "warning" not in capsys.readouterr().out  # the same benchmark and method: no column, no warning


def test_the_same_sweep_given_in_three_spellings_is_one_sweep(tmp_path, capsys):
    sweep = make_sweep(tmp_path, make_rows())
    assert report.main([str(sweep), f"{sweep}/", f"{sweep}/results.parquet"]) == 0
    out = capsys.readouterr().out
    assert out.count("sweep rank_threshold-20250101-000000:") == 1 and " sweep " not in out.splitlines()[2]
    assert f"report written to {sweep / 'report.html'}" in out


def test_a_path_to_results_parquet_is_read_as_its_folder(tmp_path, capsys):
    sweep = make_sweep(tmp_path, make_rows())
    assert report.main([str(sweep / "results.parquet")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and f"report written to {sweep / 'report.html'}" in captured.out
    assert (sweep / "report.html").is_file()


def test_printed_paths_are_absolute_however_the_folder_was_given(tmp_path, capsys, monkeypatch):
    sweep = make_sweep(tmp_path, make_rows())
    monkeypatch.chdir(tmp_path)
    assert report.write_best_config(results.read_table(sweep.name), sweep.name) == str(sweep / "best.yaml")
    assert report.main([sweep.name]) == 0
    assert f"report written to {sweep / 'report.html'}" in capsys.readouterr().out


def rewritten(sweep, change):
    """The sweep's table rewritten with ``change(table) -> table`` applied, as a damaged or foreign one."""
    table = change(pq.read_table(sweep / "results.parquet"))
    pq.write_table(table, sweep / "results.parquet")


def with_metadata(raw):
    return lambda table: table.replace_schema_metadata({b"ness_sweep": raw})


def text_acc(table):
    index = table.column_names.index("acc")
    values = pa.array([None if v is None else f"{v:.2f}" for v in table.column("acc").to_pylist()], pa.string())
    return table.set_column(index, "acc", values)


@pytest.mark.parametrize("change,named", [
    (with_metadata(b"{not json"), "metadata is not JSON"),
    (with_metadata(b'{"sweep": "x", "modes": ["max"], "searched": [], "config_columns": []}'), "has no metrics"),
    (with_metadata(b'["a list"]'), "metadata is a list"),
    (with_metadata(b'{"sweep": "x", "metrics": ["acc"], "modes": ["best"], "searched": [], "config_columns": []}'),
     "modes ['best']"),
    (lambda table: table.drop_columns(["status"]), "no status column"),
    (text_acc, "acc column holds string"),
])
def test_a_damaged_or_foreign_table_is_one_line_exit_2(change, named, tmp_path, capsys):
    sweep = make_sweep(tmp_path, make_rows())
    rewritten(sweep, change)
    before = listing(tmp_path)
    assert report.main([str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {sweep}: ") and named in err[0], err
    assert listing(tmp_path) == before
