"""The report page's sections: the leaderboard and the plots of a sweep's Parquet table and of its Optuna study.

Every section is built from ``results.parquet`` alone (plus ``plan.yaml`` for the axes' scales and ranges),
except the parameter importances, which come from the sweep's Optuna study (``optuna.journal``), the same numbers
``optuna-dashboard`` and ``optuna.importance`` show. A plot that cannot be drawn yet (no finished trial, no
study) leaves its section in place with a line saying why, so a page written mid-sweep still reads.
``report_page`` lays the sections out as ``report.html``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import plotly.graph_objects as go
import pyarrow as pa

from . import leaderboard, results, selection
from .metrics import NATURAL_MODE, TEST, on_split
from .optuna_journal import TPE_STARTUP_TRIALS, quiet_optuna
from .results import Stage, Status, SweepFolder
from .selection import HEADLINE_METRICS

STUDY_FILE = SweepFolder.OPTUNA
# the trade-off every continual-learning sweep is judged on: the headline's two numbers, each its natural way
FRONT_METRICS = HEADLINE_METRICS
FRONT_MODES = tuple(NATURAL_MODE[metric] for metric in FRONT_METRICS)
SCALES = {"loguniform": "log axis (sampled log-uniformly)", "uniform": "sampled uniformly", "int": "integers",
          "choice": "one category per choice"}
STATUS_COLOUR = {Status.TERMINATED: "#1f77b4", Status.STOPPED: "#ff7f0e", Status.DIVERGED: "#d62728",
                 Status.ERROR: "#7f7f7f"}
STATUS_SYMBOL = {Status.TERMINATED: "circle", Status.STOPPED: "x", Status.DIVERGED: "triangle-down",
                 Status.ERROR: "square"}
OTHER_COLOUR, OTHER_SYMBOL = "#bcbd22", "diamond"  # a trial that has not ended (running, paused, unfinished)
# Complete trials below which the importances carry a caution: a random forest over a few points fits noise.
# Chosen, not measured: twice TPE's random start-up trials, the least a sweep that let TPE act has.
MIN_IMPORTANCE_TRIALS = 2 * TPE_STARTUP_TRIALS
# fANOVA's time grows like n^1.6 to n^1.9 in the complete trials n (measured on synthetic studies of 3 parameters, CPU
# seconds: 250: 4, 500: 13, 1000: 49, 2000: 141), so importances rest on at most this many: a uniform random
# sample, seeded (the same study draws the same page), which keeps fANOVA's estimate unbiased where the best
# trials would not be.
IMPORTANCE_TRIALS = 500
IMPORTANCE_SEED = 0  # the sample's and fANOVA's forest's
RANGED = ("loguniform", "uniform", "int")  # distributions with a [low, high] range: the axis spans it
LEADERBOARD_ROWS = 20  # the page's leaderboard lists this many of the best trials (a Pareto front whole)


class Command(str):
    """A table cell holding a shell command: the page shows it as code that one click selects whole."""


@dataclass
class Section:
    """One section of the page: its table and figure, and ``note``: why there is no figure (the section stays
    visible), or a caution about the one there is."""

    name: str
    title: str
    caption: str
    figure: Optional[go.Figure] = None
    note: str = ""
    table: Optional[Tuple[List[str], List[List[str]]]] = None  # a header and rows of text cells, shown above the figure


# ---- what the table says -----------------------------------------------------------------------

def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_finished(row: Dict[str, Any]) -> bool:
    """A trial that ran every task: only those have a final ACC and BWT (stopped ones end at acc_seen)."""
    return row["status"] == Status.TERMINATED and _number(row.get("acc"))


def finished_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in rows if is_finished(r)]


def ordered_statuses(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The statuses of the rows, ended ones first in a fixed order (finished, stopped, ...), then the others."""
    present = {row["status"] for row in rows}
    return [s for s in Status.ENDED if s in present] + sorted(present - set(Status.ENDED))


def status_name(status: str) -> str:
    """'STOPPED (stopped early by the scheduler)': a status as a legend and the counts name it."""
    return f"{status} ({leaderboard.STATUS_MEANING.get(status, 'not ended')})"


def _label(value: Any) -> str:
    """A setting as the command line writes it: the category name of a choice axis, and hover text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _hover(row: Dict[str, Any], searched: Sequence[str]) -> str:
    """Which trial a point is, with its searched settings: what a reader needs to rerun it."""
    lines = [f"trial {row['trial_id']} ({row['status']})"]
    lines += [f"{key} = {_label(row.get(key))}" for key in searched]
    return "<br>".join(lines)


def distributions(plan_record: Optional[Dict[str, Any]]) -> Dict[str, Tuple[str, List[Any]]]:
    """Searched key -> (kind, values) from plan.yaml's ``space.search`` (``{loguniform: [low, high]}``, ...)."""
    search = ((plan_record or {}).get("space") or {}).get("search") or {}
    return {key: next(iter(spec.items())) for key, spec in search.items() if isinstance(spec, dict) and spec}


def _figure(title: str, x_title: str, y_title: str, height: int = 450) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=height,
                         template="plotly_white", hovermode="closest")
    return figure


# ---- the plots ---------------------------------------------------------------------------------

def acc_bwt_section(rows: List[Dict[str, Any]], searched: Sequence[str]) -> Section:
    """ACC against BWT: NESS promises little forgetting, so a high ACC bought with a very negative BWT shows here."""
    title = "ACC against BWT"
    caption = ("Every finished trial's final average accuracy (ACC, %) against its backward transfer (BWT, "
               "points; negative means forgetting). The Pareto front over ACC (max) and BWT (max) is marked.")
    done = [r for r in finished_rows(rows) if _number(r.get("bwt"))]
    if not done:
        return Section("acc_bwt", title, caption, note="No finished trial has both ACC and BWT yet.")
    front = selection.pareto_front(done, list(FRONT_METRICS), list(FRONT_MODES))
    figure = _figure(title, "BWT (points)", "ACC (%)")
    figure.add_trace(go.Scatter(x=[r["bwt"] for r in done], y=[r["acc"] for r in done], mode="markers",
                                name="finished trials", text=[_hover(r, searched) for r in done],
                                hovertemplate="%{text}<br>BWT %{x:.2f}, ACC %{y:.2f}<extra></extra>",
                                marker={"size": 8, "color": STATUS_COLOUR[Status.TERMINATED], "opacity": 0.6}))
    figure.add_trace(go.Scatter(x=[r["bwt"] for r in front], y=[r["acc"] for r in front], mode="lines+markers",
                                name="Pareto front", text=[_hover(r, searched) for r in front],
                                hovertemplate="%{text}<br>BWT %{x:.2f}, ACC %{y:.2f}<extra>front</extra>",
                                marker={"size": 13, "symbol": "star", "color": "#d62728"},
                                line={"dash": "dot", "color": "#d62728"}))
    return Section("acc_bwt", title, caption, figure)


def last_accuracy(row: Dict[str, Any]) -> Optional[float]:
    """A trial's test accuracy over the tasks it saw at its last report: its final ACC when it finished (ACC is
    the mean over every task after the last), the mean over the tasks it reached when it was stopped."""
    value = row.get("acc") if is_finished(row) else row.get("acc_seen")
    return value if _number(value) else None


def log_ticks(low: float, high: float) -> List[float]:
    """Tick values of a log axis from low to high: 1, 2 and 5 times each power of ten over up to 4 decades, the
    powers alone over more (plotly's own log ticks label only some and print the others as bare digits)."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    steps = (1, 2, 5) if last - first <= 4 else (1,)
    ticks = [step * 10.0 ** power for power in range(first, last + 1) for step in steps]
    inside = [tick for tick in ticks if low * (1 - 1e-9) <= tick <= high * (1 + 1e-9)]
    return inside if len(inside) >= 2 else [low, high]


def searched_range(figure: go.Figure, kind: str, values: List[Any]) -> None:
    """The x axis over the whole range the search sampled (a little beyond, so points at its ends show)."""
    low, high = values
    if kind == "loguniform":
        ticks = log_ticks(low, high)
        margin = (math.log10(high) - math.log10(low)) * 0.03
        figure.update_xaxes(type="log", range=[math.log10(low) - margin, math.log10(high) + margin],
                            tickvals=ticks, ticktext=[f"{tick:g}" for tick in ticks])
    else:
        margin = (high - low) * 0.03 or 0.5
        figure.update_xaxes(type="linear", range=[low - margin, high + margin])


def acc_vs_key_section(rows: List[Dict[str, Any]], key: str, distribution: Optional[Tuple[str, List[Any]]],
                       searched: Sequence[str]) -> Section:
    """Accuracy against one searched key, every trial that reported a task (marked by how it ended), on the scale
    and over the range the search sampled: log for loguniform, categories for choice, so a good region looks as
    wide as the sampler saw it."""
    kind, values = distribution or ("unknown", [])
    title = f"ACC against {key}"
    shown = [r for r in rows if last_accuracy(r) is not None]
    categorical = kind == "choice" or (kind == "unknown" and any(not _number(r.get(key)) for r in shown))
    if not categorical:
        shown = [r for r in shown if _number(r.get(key))]
    scale = SCALES.get(kind, "plan.yaml does not give its distribution, so a linear axis")
    unshown = len(rows) - len(shown)
    caption = (f"Every trial against its {key}: {scale}" + (", over the searched range" if kind in RANGED else "")
               + ". A finished trial at its final ACC; a trial that ended early (stopped, diverged) or is still "
               "running at its mean accuracy over the tasks it reached, marked by how it ended"
               + (f"; {unshown} trial(s) with no task reported are not shown." if unshown else "."))
    name = f"acc_vs_{key}"
    if not shown:
        return Section(name, title, caption, note=f"No trial with a value of {key} has reported a task yet.")
    figure = _figure(title, key, "accuracy (%)")
    for status in ordered_statuses(shown):
        group = [r for r in shown if r["status"] == status]
        x = [_label(r.get(key)) for r in group] if categorical else [r[key] for r in group]
        figure.add_trace(go.Scatter(
            x=x, y=[last_accuracy(r) for r in group], mode="markers", name=status_name(status),
            text=[_hover(r, searched) for r in group], legendgroup=status,
            marker={"size": 9, "opacity": 0.75, "color": STATUS_COLOUR.get(status, OTHER_COLOUR),
                    "symbol": STATUS_SYMBOL.get(status, OTHER_SYMBOL)},
            hovertemplate="%{text}<br>accuracy %{y:.2f}<extra></extra>"))
    if categorical:
        order = [_label(v) for v in values] if kind == "choice" else sorted({_label(r.get(key)) for r in shown})
        figure.update_xaxes(type="category", categoryorder="array", categoryarray=order)
    elif kind in RANGED:
        searched_range(figure, kind, values)
    else:
        figure.update_xaxes(type="linear")
    return Section(name, title, caption, figure)


def running_best(values: Sequence[float]) -> List[float]:
    """The best ACC among the trials so far, after each one: what the search had found by then."""
    best, out = -math.inf, []
    for value in values:
        best = max(best, value)
        out.append(best)
    return out


def history_section(rows: List[Dict[str, Any]], searched: Sequence[str], metric: str) -> Section:
    """The objective in the order Tune created the trials, with the best so far: did TPE improve after its random
    start?"""
    title = "Optimisation history"
    caption = (f"The objective {metric} of each finished trial against its place in the order the sweep created "
               f"trials (trials that did not finish leave gaps), and the best so far. Optuna's first 10 trials "
               "are random; TPE proposes the rest.")
    order = [(i + 1, r) for i, r in enumerate(rows) if is_finished(r) and _number(r.get(metric))]
    if not order:
        return Section("history", title, caption, note="No finished trial yet.")
    x, acc = [i for i, _ in order], [r[metric] for _, r in order]
    figure = _figure(title, "trial (creation order)", f"{metric} (%)")
    figure.add_trace(go.Scatter(x=x, y=acc, mode="markers", name=metric, text=[_hover(r, searched) for _, r in order],
                                hovertemplate=f"%{{text}}<br>{metric} %{{y:.2f}}<extra></extra>", marker={"size": 8}))
    figure.add_trace(go.Scatter(x=x, y=running_best(acc), mode="lines", name="best so far",
                                line={"shape": "hv", "color": "#d62728"}))
    return Section("history", title, caption, figure)


def importance_section(study: Any, metrics: Sequence[str], missing: str) -> Section:
    """Optuna's fANOVA importances: which searched keys the metric depended on, so the next space can fix
    the rest. Computed from the study on disk, the same numbers ``optuna.importance`` gives."""
    import optuna

    title = "Parameter importances"
    caption = (f"fANOVA importance of each searched key for {metrics[0]} (optuna.importance, seed "
               f"{IMPORTANCE_SEED}, normalised to sum 1), from the complete trials of the sweep's Optuna study "
               f"({STUDY_FILE}); stopped trials are not complete. Below {MIN_IMPORTANCE_TRIALS} complete trials the "
               f"page adds a caution; above {IMPORTANCE_TRIALS:,}, fANOVA (whose time grows faster than the trials) "
               f"runs on a uniform random {IMPORTANCE_TRIALS:,} of them.")
    if study is None:
        return Section("importances", title, caption, note=missing)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return Section("importances", title, caption,
                       note=f"{STUDY_FILE} has {len(complete)} complete trial(s); importances need at least 2.")
    used = importance_sample(complete)
    sampled = len(used) < len(complete)
    if sampled:
        caption += f" Here on a random {len(used):,} of {len(complete):,} complete trials."
    target = (lambda trial: trial.values[0]) if len(study.directions) > 1 else None
    try:
        importances = optuna.importance.get_param_importances(
            study_of(used, study.directions) if sampled else study, target=target,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED))
    except Exception as error:  # optuna refuses studies it cannot fit (no varying parameter, ...)
        return Section("importances", title, caption, note=f"Optuna cannot compute importances: {error}")
    if not importances:
        return Section("importances", title, caption, note="The study's trials share no parameter to rank.")
    title = f"{title}, from {len(used):,} complete trials"
    figure = _figure(title, "searched key", f"importance for {metrics[0]}")
    names = [name.replace("/", ".") for name in importances]  # Ray names nested keys a/b
    figure.add_trace(go.Bar(x=names, y=list(importances.values()), name="importance",
                            hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    caution = "" if len(used) >= MIN_IMPORTANCE_TRIALS else (
        f"Caution: only {len(used)} complete trials (fewer than {MIN_IMPORTANCE_TRIALS}): fANOVA's forest fits "
        "noise at this size, so read these as a rough hint, not a ranking.")
    return Section("importances", title, caption, figure, note=caution)


def importance_sample(complete: List[Any]) -> List[Any]:
    """The complete trials the importances rest on: all of them, or ``IMPORTANCE_TRIALS`` drawn
    uniformly with ``IMPORTANCE_SEED``, in the study's order."""
    if len(complete) <= IMPORTANCE_TRIALS:
        return complete
    return sorted(random.Random(IMPORTANCE_SEED).sample(complete, IMPORTANCE_TRIALS), key=lambda trial: trial.number)


def study_of(trials: Sequence[Any], directions: Sequence[Any]) -> Any:
    """An in-memory study of ``trials`` (the sample the importances rest on), quietly: Optuna logs each study it
    creates."""
    import optuna

    with quiet_optuna():
        study = optuna.create_study(directions=directions)
    study.add_trials(trials)
    return study


def acc_seen_section(rows: List[Dict[str, Any]], signal: str) -> Section:
    """The per-task signal ASHA decides on (``valid_acc_seen``, or ``acc_seen`` for a sweep selecting on test), per
    trial, so a line that ends early is a trial stopped there; its end is marked by how the trial ended."""
    title = f"{signal} per task"
    caption = (f"Mean accuracy over the tasks seen so far ({signal}, %) after each finished task, one line per "
               "trial, coloured by how it ended; the marker is its last report (× = stopped early by ASHA).")
    column = f"{signal}_per_task"
    traced = [r for r in rows if r.get(column)]
    if not traced:
        return Section("acc_seen", title, caption, note="No trial has finished a task yet.")
    figure = _figure(title, "tasks finished", f"{signal} (%)")
    for row in traced:
        status, values = row["status"], list(row[column])
        colour = STATUS_COLOUR.get(status, OTHER_COLOUR)
        figure.add_trace(go.Scatter(
            x=list(range(1, len(values) + 1)), y=values, mode="lines", name=f"trial {row['trial_id']}",
            legendgroup=status, showlegend=False, opacity=0.6, line={"color": colour},
            hovertemplate=f"trial {row['trial_id']} ({status})<br>task %{{x}}: %{{y:.2f}}<extra></extra>"))
    for status in ordered_statuses(traced):
        ends = [r for r in traced if r["status"] == status]
        figure.add_trace(go.Scatter(
            x=[len(r[column]) for r in ends], y=[r[column][-1] for r in ends],
            mode="markers", name=status_name(status), legendgroup=status,
            text=[f"trial {r['trial_id']}" for r in ends],
            marker={"size": 10, "color": STATUS_COLOUR.get(status, OTHER_COLOUR),
                    "symbol": STATUS_SYMBOL.get(status, OTHER_SYMBOL)},
            hovertemplate=f"%{{text}} ({status})<br>last report after task %{{x}}: %{{y:.2f}}<extra></extra>"))
    figure.update_xaxes(dtick=1)
    return Section("acc_seen", title, caption, figure)


def _heatmap_height(n: int) -> int:
    return max(350, 140 + 32 * n)


def acc_matrix_figure(acc_matrix: Sequence[Sequence[Optional[float]]], title: str) -> go.Figure:
    """R[i][j] as a heatmap on a fixed 0-100 colour scale, each cell labelled: the report's section and each
    trial's W&B summary show this one figure."""
    matrix = [list(row) for row in acc_matrix]
    tasks = list(range(1, len(matrix) + 1))
    figure = _figure(title, "evaluated on task j", "after training task i", _heatmap_height(len(matrix)))
    figure.add_trace(go.Heatmap(z=matrix, x=tasks, y=tasks, colorscale="Viridis", zmin=0, zmax=100,
                                texttemplate="%{text}",
                                text=[["" if v is None else f"{v:.1f}" for v in row] for row in matrix],
                                hovertemplate="after task %{y}, on task %{x}: %{z:.2f}%<extra></extra>",
                                colorbar={"title": "acc %"}))
    figure.update_xaxes(dtick=1)
    figure.update_yaxes(dtick=1, autorange="reversed")
    return figure


def acc_matrix_section(best: Optional[Dict[str, Any]]) -> Section:
    """R[i][j] of the best trial: where forgetting happened (a column fading downwards) and which tasks were hard."""
    title = "Accuracy matrix of the best trial"
    caption = ("R[i][j]: test accuracy (%) on task j after training task i, for the best trial "
               "(the leaderboard's first row); blank above the diagonal. The colours span 0 to 100% in every "
               "report, so two sweeps' matrices compare by eye.")
    if best is None or not best.get("acc_matrix"):
        return Section("acc_matrix", title, caption, note="No finished trial yet: no best trial.")
    figure = acc_matrix_figure(best["acc_matrix"], f"{title} ({best['trial_id']})")
    return Section("acc_matrix", f"{title} ({best['trial_id']})", caption, figure)


def diagnostics_grid(diagnostics: Sequence[Any]) -> Tuple[List[str], List[List[Optional[float]]]]:
    """Diagnostic keys (in the order they first appear) and z[key][task]; None where a task recorded none.
    Parquet maps come back as lists of (key, value) pairs."""
    per_task = [dict(entry or {}) for entry in diagnostics]
    keys: List[str] = []
    for entry in per_task:
        keys += [name for name in entry if name not in keys]
    return keys, [[entry.get(name) for entry in per_task] for name in keys]


def diagnostics_section(best: Optional[Dict[str, Any]]) -> Section:
    """The best trial's per-task diagnostics, as its method reports them (NESS: the subspace rank per layer,
    how much room it left each layer to learn; GPM / SGP: the basis size per layer)."""
    title = "Method diagnostics of the best trial"
    caption = ("What the method reported after each task (the first seed's run): NESS the rank r of each "
               "adapted layer's update A Bᵀ (0: frozen for that task), GPM and SGP the basis size per layer, "
               "EWC and LwF their penalty. Colour is scaled per row; the cells show the values.")
    if best is None or not any(dict(entry or {}) for entry in best.get("diagnostics") or []):
        return Section("diagnostics", title, caption, note="No finished trial with recorded diagnostics yet.")
    keys, z = diagnostics_grid(best["diagnostics"])
    tasks = list(range(1, len(best["diagnostics"]) + 1))
    scaled = [[None if v is None else v / (max(abs(x) for x in row if x is not None) or 1) for v in row] for row in z]
    figure = _figure(f"{title} ({best['trial_id']})", "task", "diagnostic", _heatmap_height(len(keys)))
    figure.add_trace(go.Heatmap(z=scaled, x=tasks, y=keys, colorscale="Blues", texttemplate="%{text}",
                                text=[["" if v is None else f"{v:.4g}" for v in row] for row in z],
                                customdata=z, showscale=False,
                                hovertemplate="%{y}, task %{x}: %{customdata:.4g}<extra></extra>"))
    figure.update_xaxes(dtick=1)
    figure.update_yaxes(type="category", autorange="reversed")
    return Section("diagnostics", f"{title} ({best['trial_id']})", caption, figure)


def leaderboard_section(table: pa.Table) -> Section:
    """The best trials (``leaderboard.leaderboard_table``: the console's columns, mean ± std over a trial's seeds), each
    with the command that reruns it, to copy."""
    meta = results.sweep_metadata(table)
    rows = leaderboard.search_rows([table], [meta["sweep"]])
    best = selection.leaderboard_order(rows, meta["metrics"], meta["modes"])
    multi = len(meta["metrics"]) > 1
    shown = best if multi else best[:LEADERBOARD_ROWS]
    objectives = ", ".join(f"{m} ({mode})" for m, mode in zip(meta["metrics"], meta["modes"]))
    which = (f"The Pareto front over {objectives}: {len(shown)} trials" if multi
             else f"The best {len(shown)} of {len(best)} finished trials by {objectives}")
    caption = (f"{which}, the search's own numbers (mean ± std over a trial's seeds when it ran several). Each "
               "rerun command trains the row's settings and gives its numbers; click it to select it whole.")
    if not shown:
        return Section("leaderboard", "Leaderboard", caption, note="No trial has finished yet.")
    header, cells = leaderboard.leaderboard_table([table], shown)
    commands = [Command(leaderboard.train_command(row, table)) for row in shown]
    return Section("leaderboard", "Leaderboard", caption,
                   table=([*header, "rerun command"], [[*line, command] for line, command in zip(cells, commands)]))


# ---- the page's sections -----------------------------------------------------------------------

def build_sections(table: pa.Table, plan_record: Optional[Dict[str, Any]], study: Any = None,
                   study_missing: str = f"No {STUDY_FILE} in the sweep folder.") -> List[Section]:
    """Every section of the page, in reading order; ``study_missing`` says why ``study`` is None."""
    meta = results.sweep_metadata(table)
    everything = table.to_pylist()
    rows = selection.stage_rows(everything, Stage.SEARCH)  # the search's trials; the confirmation has its sections
    searched = [key for key in meta["searched"] if key in table.column_names]
    kinds = distributions(plan_record)
    best, _ = leaderboard.chosen(table)  # the leaderboard's choice, one definition for the console and the page
    if meta.get("by_method"):
        study, study_missing = None, (f"One Optuna study per method (SWEEP/METHOD in {STUDY_FILE}): their "
                                      "importances are in optuna-dashboard, one study at a time.")
    return [leaderboard_section(table), *selection_sections(everything, meta),
            acc_bwt_section(rows, searched),
            *[acc_vs_key_section(rows, key, kinds.get(key), searched) for key in searched],
            history_section(rows, searched, meta["metrics"][0]),
            importance_section(study, meta["metrics"], study_missing),
            acc_seen_section(rows, on_split("acc_seen", meta.get("selected_on", TEST))),
            acc_matrix_section(best), diagnostics_section(best)]


def selection_sections(rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> List[Section]:
    """The confirmation (each confirmed configuration, search against confirmed) and, for a sweep over methods,
    the per-method table with confirmed ACC against BWT per method."""
    metrics, modes = meta["metrics"], meta["modes"]
    if not selection.confirmations(rows, metrics, modes):
        return []
    objective = metrics[0]
    sections = [Section("confirmation", "Confirmation on fresh seeds",
                        f"The search's best configurations by {objective} rerun on seeds no search trial used; "
                        "the first row is the winner (the best confirmed validation mean). 'search' is the "
                        "trial's own number, 'confirmed' the mean ± std of its reruns: their difference is the "
                        "selection's optimism.", table=leaderboard.confirmation_table(rows, meta))]
    if not meta.get("by_method"):
        return sections
    lines = selection.per_method(rows, metrics, modes)
    figure = _figure("Methods: confirmed ACC against BWT", "BWT (%), confirmed", "ACC (%), confirmed")
    for line in lines:
        acc, bwt = (line.confirmed.mean_std(m) if line.confirmed else None for m in HEADLINE_METRICS)
        if acc and bwt:
            figure.add_trace(go.Scatter(x=[bwt[0]], y=[acc[0]], mode="markers+text", name=str(line.method),
                                        text=[str(line.method)], textposition="top center",
                                        error_x={"type": "data", "array": [bwt[1]]},
                                        error_y={"type": "data", "array": [acc[1]]}))
    sections.append(Section("methods", "Methods under one budget",
                            f"Each method searched its own settings and the learning rate with the same number of "
                            f"trials, was chosen by {objective}, and its best configurations were rerun on fresh "
                            "seeds: confirmed test ACC and BWT, mean ± std (the bars) over those seeds.",
                            figure if figure.data else None,
                            note="" if figure.data else "No method's confirmation finished.",
                            table=leaderboard.method_table(rows, metrics, modes)))
    return sections


def build_figures(table: pa.Table, plan_record: Optional[Dict[str, Any]], study: Any = None) -> Dict[str, go.Figure]:
    """Section name -> plotly figure, for the plots that can be drawn (``acc_bwt``, ``acc_vs_<key>`` per
    searched key, ``history``, ``importances``, ``acc_seen``, ``acc_matrix``, ``diagnostics``)."""
    return {s.name: s.figure for s in build_sections(table, plan_record, study) if s.figure is not None}
