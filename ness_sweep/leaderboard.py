"""The text a sweep's results print as, from its Parquet table alone: the leaderboard (or Pareto front) and the
comparison of several sweeps, the confirmation and the winner's headline, the ``python -m ness_sweep.train`` line
that reruns any row (with how a rerun of an unfinished one differs from it), and ``best.yaml``'s text. The sweep's
end and ``python -m ness_sweep.report`` (the command) both print it."""

from __future__ import annotations

import collections
import shlex
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
from omegaconf import OmegaConf

from .config import UserError, argument_value, flatten, unflatten
from .methods import shipped_schema
from .metrics import FINAL, TEST
from .optuna_journal import TPE_STARTUP_TRIALS
from .results import Stage, Status, config_columns, sweep_metadata
from .selection import (
    HEADLINE_METRICS,
    Confirmed,
    confirmations,
    leaderboard_order,
    per_method,
    stage_rows,
    winner,
)

COMPARED_SETTINGS = ("benchmark", "method")  # sweeps that differ in these are shown so when compared
STATUS_MEANING = {Status.TERMINATED: "finished", Status.STOPPED: "stopped early by the scheduler",
                  Status.DIVERGED: "loss became NaN/inf", Status.ERROR: "failed"}  # what a row's status says


def row_settings(row: Dict[str, Any], table: pa.Table, seeds: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """The trial's run config as dotted key -> value, with its seed (or seeds; ``seeds`` replaces them: a confirmed
    configuration on its confirmation seeds); of the methods' settings groups only its own method's (a sweep
    over methods has a column for each option's, null in the others' rows)."""
    groups = sweep_metadata(table).get("method_groups", {})
    others = {group for method, group in groups.items() if group and method != row.get("method")}
    settings = {key: row[key] for key in config_columns(table) if key.partition(".")[0] not in others}
    seeds = list(seeds if seeds is not None else row["seeds"] or [])
    if seeds:
        settings.pop("seed", None)
    if len(seeds) == 1:
        settings["seed"] = seeds[0]
    elif seeds:
        settings["seeds"] = list(seeds)
    return settings


def train_command(row: Dict[str, Any], table: pa.Table, seeds: Optional[Sequence[int]] = None) -> str:
    """``python -m ness_sweep.train ...`` rerunning the trial: the benchmark, the searched keys, every key that
    differs from the schema default (a user's method's settings have none known here: always named), the
    seed(s), and always ``threads`` and ``device``: on the CPU float sums in another order would change the last
    digits, and training amplifies them."""
    defaults = flatten(OmegaConf.to_container(OmegaConf.structured(shipped_schema())))
    meta = sweep_metadata(table)
    always = ("benchmark", "seed", "seeds", "threads", "device", *meta["searched"])
    parts = [f"{key}={argument_value(value)}" for key, value in row_settings(row, table, seeds).items()
             if key in always or defaults.get(key, object()) != value]
    return shlex.join(["python", "-m", "ness_sweep.train", *parts])


def best_config_yaml(row: Dict[str, Any], table: pa.Table, confirmed: Optional[Confirmed] = None) -> str:
    """The trial's full run config as YAML, usable as ``ness_sweep.train preset=best.yaml``, under comment
    lines with what it measured: its metrics and its method's diagnostics per task. A confirmed winner's file
    holds its confirmation seeds, so the preset reruns the headline, mean ± std."""
    scores = ", ".join(f"{m} {metric_text(row.get(m), row.get(f'{m}_std'))}" for m in shown_metrics(table))
    lines = [f"# trial {row['trial_id']} in the search{selected_on_test_note(table)}: {scores}"]
    if confirmed is not None:
        lines.append(f"# confirmed: {headline(confirmed)}")
    for task, entry in enumerate(row.get("diagnostics") or [], start=1):
        if entry:
            lines.append(f"# task {task} diagnostics: " + ", ".join(f"{k}={v:g}" for k, v in dict(entry).items()))
    settings = row_settings(row, table, confirmed.seeds if confirmed is not None else None)
    return "\n".join(lines) + "\n" + OmegaConf.to_yaml(OmegaConf.create(unflatten(settings)))


def selected_on_test_note(table: pa.Table) -> str:
    """' (selected on test)' for a sweep that opted in to selecting on a test metric, else ''."""
    return " (selected on test)" if sweep_metadata(table).get("selected_on") == TEST else ""


def headline(confirmed: Confirmed) -> str:
    """A confirmed configuration's test ACC and BWT over its fresh seeds, beside what the search measured:
    the difference is the selection's optimism."""
    confirmed_scores, search_scores = [], []
    for metric in HEADLINE_METRICS:
        mean, std = confirmed.mean_std(metric) or (None, None)
        confirmed_scores.append(f"{metric.upper()} {metric_text(mean, std)}")
        search_scores.append(f"{metric.upper()} {metric_text(confirmed.row.get(metric))}")
    seeds = ", ".join(map(str, confirmed.seeds))
    line = (f"trial {confirmed.row['trial_id']}: {', '.join(confirmed_scores)} on fresh seeds {seeds} (test, "
            f"mean ± std); the search measured {', '.join(search_scores)}")
    acc = confirmed.mean_std("acc")
    if acc is not None and confirmed.row.get("acc") is not None:
        line += f" (the selection's optimism: {confirmed.row['acc'] - acc[0]:+.2f} ACC)"
    if not confirmed.complete:
        line += f"; {len(confirmed.reruns) - len(confirmed.finished)} of its reruns did not finish"
    return line


def shown_metrics(table: pa.Table) -> List[str]:
    """The metrics a row is shown with: the sweep's objectives first (validation ones, unless it selected on
    test), then the final test metrics."""
    return list(dict.fromkeys([*sweep_metadata(table)["metrics"], *FINAL]))


def _two_decimals(value: float) -> str:
    """Fixed 2 decimals; a rounding residue such as -8.9e-16 (BWT of a trial that forgot nothing) reads 0.00."""
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def metric_text(value: Optional[float], std: Optional[float] = None) -> str:
    """A metric cell: ``96.40``, or ``96.40 ± 0.31`` when the trial ran several seeds."""
    if value is None:
        return "-"
    return _two_decimals(value) if std is None else f"{_two_decimals(value)} ± {_two_decimals(std)}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _objectives(meta: Dict[str, Any]) -> str:
    return ", ".join(f"{m} ({mode})" for m, mode in zip(meta["metrics"], meta["modes"]))


def status_text(statuses: Sequence[str]) -> str:
    """How many trials are in each status: '8 stopped, 8 terminated'."""
    return ", ".join(f"{n} {status.lower()}" for status, n in sorted(collections.Counter(statuses).items()))


def random_search_note(num_trials: int) -> Optional[str]:
    """A line for a sweep too small for TPE to act (its first trials are drawn at random), else None."""
    if num_trials > TPE_STARTUP_TRIALS:
        return None
    return (f"  a random search: Optuna's TPE draws its first {TPE_STARTUP_TRIALS} trials at random, so "
            f"only sweep.num_samples > {TPE_STARTUP_TRIALS} lets it learn from results")


def sweep_header(table: pa.Table) -> List[str]:
    """'sweep NAME: N trials (statuses)[, M confirmation runs]', and a line saying so when the sweep is too small
    for TPE to act."""
    rows = table.to_pylist()
    search, reruns = stage_rows(rows, Stage.SEARCH), stage_rows(rows, Stage.CONFIRM)
    line = (f"sweep {sweep_metadata(table)['sweep']}: {len(search)} trials "
            f"({status_text([r['status'] for r in search])})")
    if reruns:
        line += f", {len(reruns)} confirmation runs ({status_text([r['status'] for r in reruns])})"
    note = random_search_note(len(search))
    return [line] + ([note] if note else [])


def leaderboard(table: pa.Table, top: int = 5) -> str:
    """The best trials (or the Pareto front) as a table, then the command rerunning each shown winner."""
    return compare([table], top)


def search_rows(tables: Sequence[pa.Table], labels: Sequence[str]) -> List[Dict[str, Any]]:
    """Every search row of the sweeps, each with its sweep's label under ``sweep``."""
    return [dict(row, sweep=label) for label, table in zip(labels, tables)
            for row in stage_rows(table.to_pylist(), Stage.SEARCH)]


def differing_settings(tables: Sequence[pa.Table], labels: Sequence[str]) -> Dict[str, Dict[str, List[str]]]:
    """Of ``COMPARED_SETTINGS``, those whose values differ between the sweeps: key -> sweep label -> its values.
    Numbers of another benchmark or method do not rank against each other."""
    rows = {label: stage_rows(table.to_pylist(), Stage.SEARCH) for label, table in zip(labels, tables)}
    differing = {}
    for key in COMPARED_SETTINGS:
        values = {label: sorted({_cell(row.get(key)) for row in found}) for label, found in rows.items()}
        if len({tuple(found) for found in values.values()}) > 1:
            differing[key] = values
    return differing


def differing_warning(differing: Dict[str, Dict[str, List[str]]]) -> str:
    """One line: which sweep trains which benchmark or method."""
    parts = [f"{key} (" + "; ".join(f"{label}: {', '.join(values) or 'no trial yet'}"
                                    for label, values in by_sweep.items()) + ")"
             for key, by_sweep in differing.items()]
    return (f"warning: these sweeps differ in {' and '.join(parts)}: compare a row's numbers only with rows of "
            f"the same {' and '.join(differing)}")


def leaderboard_table(tables: Sequence[pa.Table], rows: Sequence[Dict[str, Any]],
                      extra: Sequence[str] = ()) -> Tuple[List[str], List[List[str]]]:
    """Header and text cells of leaderboard rows (``search_rows``), ranked as given: a ``sweep`` column when
    several sweeps are compared, then the ``extra`` settings, the shown metrics (mean ± std over a row's seeds
    when it ran several), the searched keys and the training seconds (the console's table and the page's)."""
    several = len(tables) > 1
    metric_columns = shown_metrics(tables[0])
    searched = list(dict.fromkeys(key for table in tables for key in sweep_metadata(table)["searched"]))
    extra = [key for key in extra if key not in searched]
    header = ["#", *(["sweep"] if several else []), "trial_id", *extra, *metric_columns, *searched, "seconds"]
    cells = [[str(i + 1), *([row["sweep"]] if several else []), row["trial_id"],
              *[_cell(row.get(c)) for c in extra],
              *[metric_text(row.get(c), row.get(f"{c}_std")) for c in metric_columns],
              *[_cell(row.get(c)) for c in [*searched, "seconds"]]] for i, row in enumerate(rows)]
    return header, cells


def compare(tables: Sequence[pa.Table], top: int = 5, labels: Optional[Sequence[str]] = None) -> str:
    """The leaderboard of several sweeps ranked together, a ``sweep`` column naming each row's (``labels``,
    default the sweeps' names). They must share the first sweep's objectives: ranks of others mean nothing.
    Sweeps of different benchmarks or methods get a column showing each row's and one warning line."""
    metas = [sweep_metadata(table) for table in tables]
    labels = list(labels or [meta["sweep"] for meta in metas])
    metrics, modes = metas[0]["metrics"], metas[0]["modes"]
    for label, meta in zip(labels[1:], metas[1:]):
        if (meta["metrics"], meta["modes"]) != (metrics, modes):
            raise UserError(f"{label}: objectives {_objectives(meta)} differ from "
                            f"{labels[0]}'s {_objectives(metas[0])}; "
                            "compare sweeps of the same sweep.metric and sweep.mode")
    several = len(tables) > 1
    table_of = dict(zip(labels, tables))
    rows = search_rows(tables, labels)
    lines = [line for table in tables for line in sweep_header(table)]
    differing = differing_settings(tables, labels) if several else {}
    if differing:
        lines.append(differing_warning(differing))
    objectives, multi = _objectives(metas[0]), len(metrics) > 1
    best = leaderboard_order(rows, metrics, modes)
    if not best:
        lines.append(f"no trial finished with {objectives}; nothing to rank")
        return "\n".join(lines)
    shown = best if multi else best[:top]
    of_sweeps = f" of {len(tables)} sweeps" if several else ""
    on_test = " (selected on test)" if any(selected_on_test_note(table) for table in tables) else ""
    lines.append(f"Pareto front{of_sweeps} over {objectives}{on_test}: {len(best)} trials" if multi
                 else f"best {len(shown)}{of_sweeps} by {objectives}{on_test}")
    lines += _aligned(*leaderboard_table(tables, shown, list(differing)))
    if not several and confirmations(tables[0].to_pylist(), metrics, modes):
        return "\n".join(lines + confirmation_lines(tables[0]))
    lines.append("rerun a configuration of the front:" if multi else "rerun the best configuration:")
    for row in shown if multi else shown[:1]:
        scores = ", ".join(f"{m} {metric_text(row[m])}" for m in metrics)
        where = f"sweep {row['sweep']}, " if several else ""
        lines.append(f"  # {where}trial {row['trial_id']}: {scores}")
        lines.append(f"  {train_command(row, table_of[row['sweep']])}")
    if not several:
        lines.append("  (the search's numbers, not confirmed on fresh seeds: "
                     "the best of many noisy draws is optimistic)")
    return "\n".join(lines)


def _aligned(header: Sequence[str], cells: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    return ["  " + "  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in [header, *cells]]


def _confirmed_text(confirmed: Optional[Confirmed], metric: str) -> str:
    value = confirmed.mean_std(metric) if confirmed is not None else None
    return metric_text(*value) if value else "-"


def confirmation_table(rows: Sequence[Dict[str, Any]], meta: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """Header and text cells of each confirmed configuration, the winner first: its search and confirmed numbers
    and how many reruns finished (the console's table and the page's)."""
    objective, by_method = meta["metrics"][0], bool(meta.get("by_method"))
    shown = list(dict.fromkeys([objective, *HEADLINE_METRICS]))
    header = ["#", "trial_id", *(["method"] if by_method else []),
              *[f"{m} {stage}" for m in shown for stage in ("search", "confirmed")], "runs"]
    cells = [[str(i + 1), c.row["trial_id"], *([str(c.row["method"])] if by_method else []),
              *[text for m in shown for text in (metric_text(c.row.get(m)), _confirmed_text(c, m))],
              f"{len(c.finished)}/{len(c.reruns)}"]
             for i, c in enumerate(confirmations(rows, meta["metrics"], meta["modes"]))]
    return header, cells


def method_table(rows: Sequence[Dict[str, Any]], metrics: Sequence[str],
                 modes: Sequence[str]) -> Tuple[List[str], List[List[str]]]:
    """Header and text cells of a sweep over methods, one line per method under one budget: its trials, and its
    confirmed winner's numbers (the console's table and the page's)."""
    objective = metrics[0]
    header = ["method", "trials", f"{objective} confirmed", *(f"{m} confirmed" for m in HEADLINE_METRICS),
              "s/run", "trial_id"]
    cells = []
    for line in per_method(rows, metrics, modes):
        seconds = line.confirmed.seconds if line.confirmed else None
        cells.append([str(line.method), str(line.trials), _confirmed_text(line.confirmed, objective),
                      *(_confirmed_text(line.confirmed, m) for m in HEADLINE_METRICS),
                      "-" if seconds is None else f"{seconds:.1f}",
                      line.confirmed.row["trial_id"] if line.confirmed else "-"])
    return header, cells


def confirmation_lines(table: pa.Table) -> List[str]:
    """The confirmation: each confirmed configuration's search and confirmed numbers, the winner (the best
    confirmed validation mean) with its headline, the per-method table of a sweep over methods, and the command
    rerunning the winner on its confirmation seeds."""
    meta = sweep_metadata(table)
    metrics, modes, rows = meta["metrics"], meta["modes"], table.to_pylist()
    objective = metrics[0]
    lines = [f"confirmed on fresh seeds: the search's best by {objective}"
             f"{' per method' if meta.get('by_method') else ''}, rerun "
             "(search: the trial's own numbers; confirmed: mean ± std over the reruns)"]
    lines += _aligned(*confirmation_table(rows, meta))
    if meta.get("by_method"):
        lines.append(f"methods compared (the same trials each; each its best by {objective}, "
                     "confirmed on fresh seeds):")
        lines += _aligned(*method_table(rows, metrics, modes))
    best = winner(rows, metrics, modes)
    if best is None:
        return lines + ["no confirmation run finished: no winner"]
    lines.append(f"winner by confirmed {objective}{selected_on_test_note(table)}: {headline(best)}")
    lines.append("rerun the winner on its confirmation seeds:")
    lines.append(f"  {train_command(best.row, table, best.seeds)}")
    return lines


def best_rows(table: pa.Table) -> List[Dict[str, Any]]:
    """The leaderboard's rows of a sweep's table: its search rows in ``leaderboard_order``."""
    meta = sweep_metadata(table)
    return leaderboard_order(stage_rows(table.to_pylist(), Stage.SEARCH), meta["metrics"], meta["modes"])


def chosen(table: pa.Table) -> Tuple[Optional[Dict[str, Any]], Optional[Confirmed]]:
    """The sweep's choice: the confirmed winner's search row and its confirmation, or without a confirmation
    the best search row (the first of a Pareto front) and None."""
    meta = sweep_metadata(table)
    confirmed = winner(table.to_pylist(), meta["metrics"], meta["modes"])
    if confirmed is not None:
        return confirmed.row, confirmed
    best = best_rows(table)
    return (best[0] if best else None), None


def full_run_tasks(row: Dict[str, Any], table: pa.Table) -> Optional[int]:
    """How many tasks a full run of the row's benchmark trains: what the sweep's finished rows of that benchmark
    trained (the table does not record it otherwise); None when none finished."""
    done = [other["task"] for other in table.to_pylist() if other["status"] == Status.TERMINATED
            and other.get("benchmark") == row.get("benchmark") and other.get("task")]
    return max(done) if done else None


def rerun_caveat(row: Dict[str, Any], table: pa.Table) -> Optional[str]:
    """How a rerun of a row that did not finish differs from what the row holds (None for a finished row): the
    command trains every task, the row holds the tasks before the trial ended, and the rerun prints the row's
    numbers on its line for the row's last task (the mean of its seeds' lines when it ran several)."""
    status = row["status"]
    if status == Status.TERMINATED:
        return None
    done, total = row.get("task") or 0, full_run_tasks(row, table)
    line = (f"# trial {row['trial_id']} {status} ({STATUS_MEANING.get(status, 'not ended')}) after task {done}"
            f"{f' of {total}' if total else ''}: the full run trains {f'all {total} tasks' if total else 'every task'}"
            "; its row holds ")
    if not done:
        return line + "no task's numbers"
    seen = [f"{column} {metric_text(row[column])}" for column in ("acc_seen", "valid_acc_seen")
            if row.get(column) is not None]
    line += f"the first {done}"
    if seen:
        seeds = " (the mean over its seeds)" if len(row.get("seeds") or []) > 1 else ""
        line += f" ({', '.join(seen)}: the rerun's 'task {done}/' line prints them as mean and validation{seeds})"
    return line
