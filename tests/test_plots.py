"""The HTML report (ness_sweep.plots, ness_sweep.report_page): every plot is there and shows the table's numbers
(every trial that reported, over the searched range), the leaderboard carries rerun commands, the page is small
and loads plotly from the one file written beside it, and sweeps without finished trials, without a study or
with two objectives still report.

Each test builds a sweep folder by hand, as a sweep leaves it: results.parquet written through
ness_sweep.results, plan.yaml, and optuna.journal holding the finished rows as complete trials.
"""

from __future__ import annotations

import html
import math
import random
import re
import shlex

import numpy as np
import optuna
import plotly.offline
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from omegaconf import OmegaConf

from ness_sweep import leaderboard, metrics, plots, report_page, results, selection

optuna.logging.set_verbosity(optuna.logging.WARNING)

SEARCH = {"ness.threshold": {"loguniform": [1.0e-4, 1.0e-1]}, "train.lr": {"loguniform": [1.0e-3, 0.3]},
          "ness.rank": {"uniform": [0.05, 1.0]}, "ness.norm": {"choice": ["frobenius", "nuclear"]}}
COLUMNS = [("benchmark", pa.string()), ("method", pa.string()), ("train.epochs", pa.int64()),
           ("train.lr", pa.float64()), ("ness.threshold", pa.float64()), ("ness.rank", pa.float64()),
           ("ness.norm", pa.string())]
TASKS = 3
# trial id -> status and tasks finished (a STOPPED trial's history is shorter than TASKS)
TRIALS = [("t00", "TERMINATED", 3), ("t01", "STOPPED", 1), ("t02", "TERMINATED", 3), ("t03", "TERMINATED", 3),
          ("t04", "STOPPED", 2), ("t05", "ERROR", 0), ("t06", "TERMINATED", 3), ("t07", "TERMINATED", 3),
          ("t08", "DIVERGED", 1), ("t09", "RUNNING", 2), ("t10", "TERMINATED", 3)]
# a method's per-task diagnostics: keys that appear late (rank/fc3) and scales far apart (penalty)
BEST_DIAGNOSTICS = [{"rank/fc1": 64.0, "rank/fc2": 32.0}, {"rank/fc1": 12.0, "rank/fc2": 5.0, "rank/fc3": 2.0},
                    {"rank/fc1": 0.0, "rank/fc3": 1.0, "penalty": 0.003}]


def optuna_distribution(spec):
    (kind, values), = spec.items()
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(values)
    if kind == "int":
        return optuna.distributions.IntDistribution(*values)
    return optuna.distributions.FloatDistribution(*values, log=kind == "loguniform")


def make_rows(statuses=TRIALS, seed=0):
    """Rows as the sweep writes them: finished ones with a lower-triangular R and ACC/BWT/forgetting from it."""
    rng = random.Random(seed)
    rows = []
    for trial_id, status, done in statuses:
        row = {name: None for name, _ in [*results.ID_COLUMNS, *COLUMNS, *results.METRIC_COLUMNS]}
        row.update({"trial_id": trial_id, "status": status, "benchmark": "permuted_digits", "method": "ness",
                    "train.epochs": 10, "seeds": [0], "task": done,
                    "ness.threshold": 10 ** rng.uniform(-4, -1), "train.lr": 10 ** rng.uniform(-3, math.log10(0.3)),
                    "ness.rank": rng.uniform(0.05, 1.0), "ness.norm": rng.choice(["frobenius", "nuclear"])})
        # plasticity p: learns each task better (80 + 15p) but forgets 10p² points per later task, so ACC
        # rises with p up to 0.75 while BWT falls: a real ACC/BWT trade-off with a front of several trials
        p = rng.uniform(0, 1)
        learned = [80 + 15 * p + rng.uniform(-0.5, 0.5) for _ in range(TASKS)]
        matrix = [[learned[j] - 10 * p * p * (i - j) if j <= i else None for j in range(TASKS)]
                  for i in range(done)]
        if done:
            row["acc_seen_per_task"] = [metrics.seen_accuracy(r[:i + 1]) for i, r in enumerate(matrix)]
            row["acc_seen"] = row["acc_seen_per_task"][-1]
        if status == "TERMINATED":
            row.update(acc=metrics.average_accuracy(matrix), bwt=metrics.backward_transfer(matrix),
                       forgetting=metrics.forgetting(matrix), acc_matrix=matrix, diagnostics=BEST_DIAGNOSTICS,
                       trainable_params=[1000, 300, 40], seconds=12.5)
        if status == "ERROR":
            row["error"] = "RuntimeError: boom"
        rows.append(row)
    return rows


def make_sweep(root, rows, metric_names=("acc",), searched=tuple(SEARCH), study_trials=None, plan=True):
    """A sweep folder: results.parquet, plan.yaml, and optuna.journal with one complete trial per finished row."""
    name = "rank_threshold-20250101-000000"
    sweep = root / name
    sweep.mkdir(parents=True)
    modes = ["max"] * len(metric_names)
    schema = results.make_schema(COLUMNS, {"sweep": name, "space": "search_spaces/rank_threshold.yaml",
                                           "metrics": list(metric_names), "modes": modes,
                                           "searched": list(searched),
                                           "config_columns": [c for c, _ in COLUMNS]})
    results.write_table(rows, schema, pafs.LocalFileSystem(), str(sweep / results.SweepFolder.TABLE))
    if plan:
        record = {"name": name, "command_line": ["space=rank_threshold"],
                  "space": {"name": "rank_threshold", "source": "search_spaces/rank_threshold.yaml",
                            "search": {k: SEARCH[k] for k in searched}, "fixed": {"method": "ness"}, "sweep": {}},
                  "metrics": list(metric_names), "modes": modes}
        (sweep / "plan.yaml").write_text("# The plan this sweep started with\n" + OmegaConf.to_yaml(record))
    if study_trials is not False:
        study = optuna.create_study(storage=journal(sweep), study_name=name,
                                    directions=["maximize"] * len(metric_names))
        finished = [r for r in rows if r["status"] == "TERMINATED"]
        for row in finished[:study_trials]:
            params = {k: row[k] for k in searched}
            distributions = {k: optuna_distribution(SEARCH[k]) for k in searched}
            values = [row[m] for m in metric_names]
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, values=values))
        for row in rows:
            if row["status"] == "STOPPED":  # what ASHA's stops look like to Optuna
                study.add_trial(optuna.trial.create_trial(
                    params={k: row[k] for k in searched}, state=optuna.trial.TrialState.PRUNED,
                    distributions={k: optuna_distribution(SEARCH[k]) for k in searched}))
    return sweep


def journal(sweep):
    """The sweep's study file, opened as the docs tell users to."""
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep / "optuna.journal")))


def load(sweep):
    table = results.read_table(str(sweep))
    plan = OmegaConf.to_container(OmegaConf.load(sweep / "plan.yaml")) if (sweep / "plan.yaml").exists() else None
    study = None
    if (sweep / "optuna.journal").exists():
        study = optuna.load_study(study_name=results.sweep_metadata(table)["sweep"], storage=journal(sweep))
    return table, plan, study


@pytest.fixture
def sweep(tmp_path):
    return make_sweep(tmp_path, make_rows())


def finished(table):
    return [r for r in table.to_pylist() if r["status"] == "TERMINATED"]


def test_every_plot_is_built(sweep):
    figures = plots.build_figures(*load(sweep))
    assert set(figures) == {"acc_bwt", "history", "importances", "acc_seen", "acc_matrix", "diagnostics",
                            *(f"acc_vs_{k}" for k in SEARCH)}


def test_acc_bwt_shows_every_finished_trial_and_marks_the_pareto_front(sweep):
    table, plan, study = load(sweep)
    figure = plots.build_figures(table, plan, study)["acc_bwt"]
    done = finished(table)
    points, front = figure.data
    assert list(points.x) == [r["bwt"] for r in done] and list(points.y) == [r["acc"] for r in done]
    expected = selection.pareto_front(table.to_pylist(), ["acc", "bwt"], ["max", "max"])
    assert list(zip(front.x, front.y)) == [(r["bwt"], r["acc"]) for r in expected]
    # brute force: a marked point is one no finished trial beats on both ACC and BWT
    beaten = {r["trial_id"] for r in done for o in done
              if o["acc"] >= r["acc"] and o["bwt"] >= r["bwt"] and (o["acc"], o["bwt"]) != (r["acc"], r["bwt"])}
    undominated = {(r["bwt"], r["acc"]) for r in done if r["trial_id"] not in beaten}
    assert set(zip(front.x, front.y)) == undominated and 1 < len(undominated) < len(done)


def test_each_key_plot_shows_every_trial_that_reported_marked_by_how_it_ended(sweep):
    table, plan, study = load(sweep)
    figures = plots.build_figures(table, plan, study)
    rows = table.to_pylist()
    for key, spec in SEARCH.items():
        figure = figures[f"acc_vs_{key}"]
        traces = {trace.legendgroup: trace for trace in figure.data}
        assert set(traces) == {"TERMINATED", "STOPPED", "DIVERGED", "RUNNING"}  # the ERROR trial reported no task
        for status, trace in traces.items():
            group = [r for r in rows if r["status"] == status]
            assert list(trace.x) == [r[key] for r in group], (key, status)
            # a finished trial at its ACC, the others at the mean accuracy of the last task they reported
            expected = [r["acc"] if status == "TERMINATED" else r["acc_seen_per_task"][-1] for r in group]
            assert list(trace.y) == expected
        assert traces["STOPPED"].marker.symbol == "x" and "stopped early" in traces["STOPPED"].name
        assert traces["TERMINATED"].marker.symbol != "x"
        kind = next(iter(spec))
        assert (figure.layout.xaxis.type == "log") == (kind == "loguniform"), key
        if kind == "choice":
            assert figure.layout.xaxis.type == "category"
            assert list(figure.layout.xaxis.categoryarray) == spec["choice"]
        assert figure.layout.xaxis.title.text == key


def test_numeric_key_axes_span_the_searched_range_with_readable_log_ticks(sweep):
    figures = plots.build_figures(*load(sweep))
    for key in ("ness.threshold", "train.lr", "ness.rank"):
        (kind, (low, high)), = SEARCH[key].items()
        axis = figures[f"acc_vs_{key}"].layout.xaxis
        start, end = (math.log10(low), math.log10(high)) if kind == "loguniform" else (low, high)
        width = end - start
        assert start - 0.1 * width < axis.range[0] <= start and end <= axis.range[1] < end + 0.1 * width, key
    threshold = figures["acc_vs_ness.threshold"].layout.xaxis
    assert list(threshold.ticktext) == ["0.0001", "0.0002", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.02",
                                        "0.05", "0.1"]
    assert list(threshold.tickvals) == pytest.approx([float(text) for text in threshold.ticktext])
    lr = figures["acc_vs_train.lr"].layout.xaxis
    assert list(lr.ticktext) == ["0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2"]
    # over more than 4 decades, the powers of ten alone
    assert plots.log_ticks(1e-8, 1.0) == pytest.approx([10.0 ** k for k in range(-8, 1)])


def test_history_is_creation_order_and_best_so_far_is_the_running_max(sweep):
    table, plan, study = load(sweep)
    points, best = plots.build_figures(table, plan, study)["history"].data
    order = [i + 1 for i, r in enumerate(table.to_pylist()) if r["status"] == "TERMINATED"]
    acc = [r["acc"] for r in finished(table)]
    assert list(points.x) == order == [1, 3, 4, 7, 8, 11] and list(points.y) == acc
    assert list(best.x) == order and list(best.y) == list(np.maximum.accumulate(acc))
    assert best.y[-1] == max(acc)


def test_importances_come_from_the_study_for_every_searched_key(sweep):
    table, plan, study = load(sweep)
    (bars,) = plots.build_figures(table, plan, study)["importances"].data
    assert sorted(bars.x) == sorted(SEARCH)
    expected = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert dict(zip(bars.x, bars.y)) == pytest.approx(expected)
    assert sum(bars.y) == pytest.approx(1.0)


def test_importances_say_how_many_trials_they_rest_on_and_caution_below_the_minimum(tmp_path):
    few = make_sweep(tmp_path / "few", make_rows())
    sections = {s.name: s for s in plots.build_sections(*load(few))}
    complete = sum(r["status"] == "TERMINATED" for r in make_rows())
    assert complete < plots.MIN_IMPORTANCE_TRIALS
    assert f"from {complete} complete trials" in sections["importances"].title
    assert sections["importances"].note.startswith(f"Caution: only {complete} complete trials")
    assert "Caution: only" in open(report_page.write_html(str(few))).read()
    rows = make_rows([(f"t{i:02d}", "TERMINATED", 3) for i in range(plots.MIN_IMPORTANCE_TRIALS)])
    enough = make_sweep(tmp_path / "enough", rows)
    sections = {s.name: s for s in plots.build_sections(*load(enough))}
    assert f"from {plots.MIN_IMPORTANCE_TRIALS} complete trials" in sections["importances"].title
    assert sections["importances"].note == "" and sections["importances"].figure is not None


def test_acc_seen_has_a_line_per_trial_ending_where_it_stopped(sweep):
    table, plan, study = load(sweep)
    figure = plots.build_figures(table, plan, study)["acc_seen"]
    lines = {t.name: t for t in figure.data if t.mode == "lines"}
    with_history = [r for r in table.to_pylist() if r["acc_seen_per_task"]]
    assert set(lines) == {f"trial {r['trial_id']}" for r in with_history}
    for row in with_history:
        line = lines[f"trial {row['trial_id']}"]
        assert list(line.y) == row["acc_seen_per_task"]
        assert list(line.x) == list(range(1, row["task"] + 1))
    ends = {t.legendgroup: t for t in figure.data if t.mode == "markers"}
    stopped = [r for r in with_history if r["status"] == "STOPPED"]
    assert list(ends["STOPPED"].x) == [1, 2] == [r["task"] for r in stopped]
    assert list(ends["STOPPED"].y) == [r["acc_seen_per_task"][-1] for r in stopped]
    assert ends["STOPPED"].marker.symbol == "x" and "stopped early" in ends["STOPPED"].name
    assert set(ends) == {"TERMINATED", "STOPPED", "DIVERGED", "RUNNING"}  # the ERROR trial reported nothing


def test_heatmaps_show_the_best_trials_matrix_and_diagnostics(sweep):
    table, plan, study = load(sweep)
    figures = plots.build_figures(table, plan, study)
    best = max(finished(table), key=lambda r: r["acc"])
    assert best["trial_id"] == leaderboard.best_rows(table)[0]["trial_id"]
    (heatmap,) = figures["acc_matrix"].data
    assert [list(row) for row in heatmap.z] == best["acc_matrix"]
    assert (heatmap.zmin, heatmap.zmax) == (0, 100)  # one colour scale for every report, not this matrix's range
    assert heatmap.text[2][0] == f"{best['acc_matrix'][2][0]:.1f}" and heatmap.text[0][2] == ""
    assert best["trial_id"] in figures["acc_matrix"].layout.title.text
    (diagnostics,) = figures["diagnostics"].data
    assert list(diagnostics.x) == [1, 2, 3] and list(diagnostics.y) == ["rank/fc1", "rank/fc2", "rank/fc3", "penalty"]
    values = [[64, 12, 0], [32, 5, None], [None, 2, 1], [None, None, 0.003]]
    assert [list(row) for row in diagnostics.customdata] == values  # the values, shown and hovered
    assert diagnostics.text[3][2] == "0.003" and diagnostics.text[0][1] == "12"
    # colour scaled per row (a penalty of 0.003 is as dark as a rank of 64 is in its row)
    assert [list(row) for row in diagnostics.z] == [[1, 12 / 64, 0], [1, 5 / 32, None], [None, 1, 0.5], [None, None, 1]]


def test_the_page_is_small_and_loads_plotly_from_the_file_beside_it(sweep):
    path = report_page.write_html(str(sweep))
    assert path == str(sweep / "report.html")
    page = (sweep / "report.html").read_text()
    figures = plots.build_figures(*load(sweep))
    scripts = re.findall(r"<script[^>]*\bsrc\s*=\s*'([^']*)'", page)
    assert scripts == [f"plotly-{plotly.offline.get_plotlyjs_version()}.min.js"]  # relative: beside the page
    library = (sweep / scripts[0]).read_text()
    assert library == plotly.offline.get_plotlyjs() and "* plotly.js v" in library
    assert "* plotly.js v" not in page and len(page.encode()) < 300_000  # the numbers only (4.9 MB inlined)
    assert page.count("Plotly.newPlot(") == len(figures)
    assert not re.search(r"<link\b", page, re.I)
    assert not re.search(r"<(?:img|iframe|script)[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//", page, re.I)
    for figure in figures.values():
        assert figure.layout.title.text in page
    assert "<h1>Sweep rank_threshold-20250101-000000</h1>" in page
    assert "11 trials: 6 TERMINATED (finished), 2 STOPPED (stopped early by the scheduler), 1 DIVERGED" in page


def test_the_library_is_written_once_and_a_torn_copy_is_replaced(sweep, monkeypatch):
    report_page.write_html(str(sweep))
    library = sweep / report_page.PLOTLY_JS
    written = []
    real = results.write_atomically
    monkeypatch.setattr(results, "write_atomically",
                        lambda fs, path, data: (written.append(path), real(fs, path, data)))
    report_page.write_html(str(sweep))
    assert written == [f"{sweep}/report.html"]  # the page rewritten, the library kept
    library.write_text(library.read_text()[:1000])  # a copy cut short by someone else's copying
    written.clear()
    report_page.write_html(str(sweep))
    assert written == [str(library), f"{sweep}/report.html"] and library.read_text() == plotly.offline.get_plotlyjs()
    assert not [p.name for p in sweep.iterdir() if ".tmp-" in p.name]


def test_the_leaderboard_lists_the_best_with_mean_and_std_and_a_rerun_command(tmp_path):
    rows = make_rows()
    best = max((r for r in rows if r["acc"] is not None), key=lambda r: r["acc"])
    best.update(seeds=[1, 2], acc_std=0.314)
    sweep = make_sweep(tmp_path, rows)
    table = results.read_table(str(sweep))
    section = {s.name: s for s in plots.build_sections(*load(sweep))}["leaderboard"]
    header, cells = section.table
    assert header[:2] == ["#", "trial_id"] and header[-1] == "rerun command"
    ranked = sorted((r for r in table.to_pylist() if r["acc"] is not None), key=lambda r: -r["acc"])
    assert [line[1] for line in cells] == [r["trial_id"] for r in ranked]
    assert cells[0][header.index("acc")] == f"{best['acc']:.2f} ± 0.31"
    for line, row in zip(cells, ranked):
        words = shlex.split(line[-1])
        assert words[:3] == ["python", "-m", "ness_sweep.train"]
        assert f"train.lr={row['train.lr']!r}" in words and f"ness.norm={row['ness.norm']}" in words
    assert "seeds=[1,2]" in shlex.split(cells[0][-1])
    page = open(report_page.write_html(str(sweep))).read()
    assert f"rerun command: <code>{html.escape(cells[0][-1])}</code></td></tr>" in page


def test_a_sweep_with_no_finished_trial_still_gets_a_page(tmp_path):
    rows = make_rows([("a", "STOPPED", 1), ("b", "RUNNING", 2), ("c", "PENDING", 0)])
    sweep = make_sweep(tmp_path, rows, study_trials=False, plan=False)
    table, plan, study = load(sweep)
    # trials that reported tasks are on the per-key plots even before any finished
    assert set(plots.build_figures(table, plan, study)) == {"acc_seen", *(f"acc_vs_{k}" for k in SEARCH)}
    sections = {s.name: s for s in plots.build_sections(table, plan, study)}
    assert sections["acc_matrix"].figure is None and "No finished trial" in sections["acc_matrix"].note
    report_page.write_html(str(sweep))
    page = (sweep / "report.html").read_text()
    assert "No trial has finished yet" in page
    assert "No optuna.journal in the sweep folder" in page
    assert page.count("Plotly.newPlot(") == 1 + len(SEARCH)


def test_a_study_of_one_complete_trial_is_too_small_for_importances(tmp_path):
    sweep = make_sweep(tmp_path, make_rows(), study_trials=1)
    table, plan, study = load(sweep)
    sections = {s.name: s for s in plots.build_sections(table, plan, study)}
    assert sections["importances"].figure is None
    assert "1 complete trial(s); importances need at least 2" in sections["importances"].note
    assert "importances need at least 2" in open(report_page.write_html(str(sweep))).read()


def test_an_unreadable_study_is_named_on_the_page(tmp_path):
    sweep = make_sweep(tmp_path, make_rows(), study_trials=False)
    (sweep / "optuna.journal").write_bytes(b"not a journal at all\n" * 10)
    page = open(report_page.write_html(str(sweep))).read()
    assert "optuna.journal is unreadable" in page


def test_the_report_reads_a_copy_of_the_journal_and_writes_nothing_else_into_the_sweep_folder(sweep):
    """The page of a running sweep: its journal may end in a line the driver is still appending (here cut in the
    middle); the report reads the trials before it, and leaves the journal and the folder as they were (Optuna's
    journal takes a lock file beside the file it writes: none appears here)."""
    journal_file = sweep / "optuna.journal"
    journal_file.write_bytes(journal_file.read_bytes()[:-20])
    before = {path.name: path.read_bytes() for path in sweep.iterdir()}
    page = open(report_page.write_html(str(sweep))).read()
    assert "unreadable" not in page and "Parameter importances, from 6 complete trials" in page
    after = {path.name: path.read_bytes() for path in sweep.iterdir()}
    assert set(after) - set(before) == {"report.html", report_page.PLOTLY_JS}
    assert {name: after[name] for name in before} == before


def synthetic_study(trials):
    """An in-memory study of ``trials`` complete trials over two keys, the objective depending on one of them."""
    rng = random.Random(1)
    distributions = {"train.lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True),
                     "ness.rank": optuna.distributions.FloatDistribution(0.05, 1.0)}
    study = optuna.create_study(direction="maximize")
    for _ in range(trials):
        params = {"train.lr": 10 ** rng.uniform(-3, math.log10(0.3)), "ness.rank": rng.uniform(0.05, 1.0)}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=90 - 10 * abs(math.log10(params["train.lr"]) + 2)))
    return study


def test_importances_of_a_large_study_rest_on_a_seeded_uniform_sample(monkeypatch):
    """fANOVA's time grows faster than the trials: above IMPORTANCE_TRIALS complete trials the importances come
    from a random sample of that many (the same one each time, drawn over the whole study, not its first or best
    trials), and the caption says so."""
    monkeypatch.setattr(plots, "IMPORTANCE_TRIALS", 30)
    study = synthetic_study(100)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    sample = plots.importance_sample(complete)
    assert len({t.number for t in sample}) == 30 and {t.number for t in sample} <= {t.number for t in complete}
    assert [t.number for t in sample] == sorted(t.number for t in sample)
    assert [t.number for t in plots.importance_sample(complete)] == [t.number for t in sample]
    assert min(t.number for t in sample) < 30 and max(t.number for t in sample) >= 70  # spread, not the first 30
    best = sorted(complete, key=lambda t: t.value)[-30:]
    assert {t.number for t in sample} != {t.number for t in best}
    section = plots.importance_section(study, ["acc"], "")
    assert "on a random 30 of 100 complete trials" in section.caption
    assert section.title == "Parameter importances, from 30 complete trials" and section.note == ""
    alone = optuna.create_study(direction="maximize")
    alone.add_trials(sample)
    expected = optuna.importance.get_param_importances(alone, evaluator=optuna.importance.FanovaImportanceEvaluator(
        seed=0))
    (bars,) = section.figure.data
    assert dict(zip(bars.x, bars.y)) == pytest.approx(expected)
    assert max(expected, key=expected.get) == "train.lr"  # the key the objective depends on


def test_a_study_of_at_most_the_sample_size_is_used_whole(monkeypatch):
    monkeypatch.setattr(plots, "IMPORTANCE_TRIALS", 30)
    study = synthetic_study(30)
    section = plots.importance_section(study, ["acc"], "")
    assert "on a random" not in section.caption and section.title.endswith("from 30 complete trials")
    expected = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(
        seed=0))
    assert dict(zip(section.figure.data[0].x, section.figure.data[0].y)) == pytest.approx(expected)


def test_two_objectives_use_the_first_for_importances_and_the_front_for_the_best(tmp_path):
    sweep = make_sweep(tmp_path, make_rows(seed=3), metric_names=("acc", "bwt"))
    table, plan, study = load(sweep)
    figures = plots.build_figures(table, plan, study)
    (bars,) = figures["importances"].data
    expected = optuna.importance.get_param_importances(
        study, target=lambda t: t.values[0], evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert dict(zip(bars.x, bars.y)) == pytest.approx(expected)
    front = selection.pareto_front(table.to_pylist(), ["acc", "bwt"], ["max", "max"])
    assert [list(r) for r in figures["acc_matrix"].data[0].z] == front[0]["acc_matrix"]
    assert "acc (max), bwt (max)" in open(report_page.write_html(str(sweep))).read()


def test_a_sweep_searching_only_a_choice_has_no_numeric_axis(tmp_path):
    sweep = make_sweep(tmp_path, make_rows(), searched=("ness.norm",))
    table, plan, study = load(sweep)
    figures = plots.build_figures(table, plan, study)
    assert [n for n in figures if n.startswith("acc_vs_")] == ["acc_vs_ness.norm"]
    assert figures["acc_vs_ness.norm"].layout.xaxis.type == "category"
    assert list(figures["importances"].data[0].x) == ["ness.norm"]
    report_page.write_html(str(sweep))


def test_without_plan_numeric_keys_get_linear_axes(tmp_path):
    sweep = make_sweep(tmp_path, make_rows(), plan=False)
    table, plan, study = load(sweep)
    figures = plots.build_figures(table, plan, study)
    assert figures["acc_vs_ness.threshold"].layout.xaxis.type == "linear"
    assert figures["acc_vs_ness.norm"].layout.xaxis.type == "category"  # strings: categories anyway
    assert list(figures["acc_vs_ness.norm"].data[0].x) == [r["ness.norm"] for r in finished(table)]


def test_a_uri_sweep_folder_is_read_and_written_through_its_filesystem(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path, make_rows())
    remote = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())  # not a LocalFileSystem: copied bytes
    real = results.filesystem_and_path

    def fake(location):
        if location.startswith("fake://"):
            return remote, location[len("fake://"):]
        return real(location)

    monkeypatch.setattr(results, "filesystem_and_path", fake)
    path = report_page.write_html(f"fake://{sweep.name}/")
    assert path == f"fake://{sweep.name}/report.html"
    page = (sweep / "report.html").read_text()
    assert page.count("Plotly.newPlot(") == len(plots.build_figures(*load(sweep)))  # importances included
    assert "unreadable" not in page and "No optuna.journal" not in page
    assert (sweep / report_page.PLOTLY_JS).read_text() == plotly.offline.get_plotlyjs()  # through the file system too
