"""The driver side of a sweep: Tune callbacks that print one line per trial, keep ``results.parquet``, and end
the run when a file of the sweep folder cannot be written."""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ray import tune
from ray.tune.experiment import Trial

from .. import results
from ..config import flatten, resolved
from ..metrics import TEST, VALID
from ..results import Stage, Status
from .columns import column_types
from .plan import CONFIRMS, SweepPlan, trial_run_config

TUNE_ENDED = (Trial.TERMINATED, Trial.ERROR)  # Tune's own states of a trial that will not run again


def trial_status(result: Dict[str, Any], errored: bool = False) -> str:
    """How a trial ended, from its last report."""
    if errored:
        return Status.ERROR
    if result.get("acc") is not None:
        return Status.TERMINATED
    if result.get("diverged"):
        return Status.DIVERGED
    return Status.STOPPED


def _error_text(trial) -> Optional[str]:
    """The trial's whole error (Ray's traceback included): the table keeps it all. ``get_error`` reads it in the
    sweep folder, where Tune copies it only later; as the trial fails it is in the trial's local ``error_file``."""
    text = str(trial.get_error() or "").strip()
    if not text and trial.error_file and os.path.isfile(trial.error_file):
        text = Path(trial.error_file).read_text().strip()
    return text or None



def short_params(params: Dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class ProgressLines(tune.Callback):
    """One line per finished trial instead of Tune's status tables."""

    def __init__(self, plan: SweepPlan, num_tasks: int, out: Callable[[str], None], total: Optional[int] = None):
        self.plan, self.num_tasks, self.out = plan, num_tasks, out
        self.total = total or plan.total_trials  # the trials of this stage: the search's, or the confirmation's

    def _line(self, trials, trial, text: str) -> None:
        ended = {t.trial_id for t in trials if t.status in TUNE_ENDED} | {trial.trial_id}
        width = len(str(self.total))
        self.out(f"[{len(ended):>{width}}/{self.total}] {trial.trial_id}  {text}  {short_params(trial.config)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result
        status = trial_status(result)
        if status == Status.TERMINATED:
            scores = "  ".join(f"{m} {result[m]:6.2f}" for m in dict.fromkeys([*self.plan.metrics, "acc", "bwt"]))
            self._line(trials, trial, f"done     {scores}  ({result['seconds']:.1f} s)")
        elif status == Status.DIVERGED:
            self._line(trials, trial, f"diverged at task {result.get('task', 0) + 1}/{self.num_tasks}")
        else:
            signal = self.plan.signal
            self._line(trials, trial, f"stopped  after task {result.get('task')}/{self.num_tasks}: "
                                      f"{signal} {result.get(signal, float('nan')):.2f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, f"error    {results.error_line(_error_text(trial))} "
                                  "(the whole error: the row's error column)")


class FailedWrites(tune.Callback):
    """Ends the Tune run when the driver could not write a file of the sweep folder (disk full, a folder in the
    way). Tune blames a failure inside a trial's hooks on that trial and retries it, so a writer records its
    ``results.WriteFailed`` here instead of raising; this callback, listed last, raises it at the next step or
    when the run ends. The run then stops as if its driver had died: no trial is marked failed, and
    ``resume=true`` continues it."""

    def __init__(self):
        self.first: Optional[results.WriteFailed] = None

    def record(self, error: results.WriteFailed) -> None:
        self.first = self.first or error

    def raise_first(self) -> None:
        if self.first is not None:
            raise self.first

    def on_step_begin(self, iteration, trials, **info):
        self.raise_first()

    def on_experiment_end(self, trials, **info):
        self.raise_first()


class ResultsTable(tune.Callback):
    """Keeps ``results.parquet``: each trial's row as the trial ends, in a small file of its own beside the table
    (``results.write_row``, a cost that does not grow with the sweep), and the whole table rewritten with every
    row (the running trials' too) when the stage first writes, at most every ``REWRITE_S`` seconds after, and when
    the stage ends. What ``results.read_table`` reads is then every row at any moment, after a kill too. Rows are
    built once: a resume keeps the rows the table holds of trials that had ended. A write that fails goes to
    ``failed_writes``, which ends the run."""

    REWRITE_S = 30.0

    def __init__(self, plan: SweepPlan, stage: str = Stage.SEARCH, failed_writes: Optional[FailedWrites] = None):
        self.plan, self.stage = plan, stage
        self.failed_writes = failed_writes or FailedWrites()
        self.columns = column_types(plan.run_settings(), plan.space, plan.run_schema())
        self.schema = results.make_schema(self.columns, {
            "sweep": plan.name,
            "space": plan.space.source,
            "metrics": plan.metrics,
            "modes": plan.modes,
            "selected_on": TEST if plan.selected_on_test else VALID,
            "searched": list(plan.space.search),
            "config_columns": [name for name, _ in self.columns],
            "method_groups": plan.method_groups(),
            "by_method": plan.by_method,
            "confirm_seeds": plan.confirm_seeds if plan.cfg.sweep.confirm_top else [],
        })
        self.settings = plan.run_settings()
        self.statuses: Dict[str, str] = {}  # trial id -> how it ended, as seen here
        self.ended_before: Optional[set] = None
        self.configs: Dict[str, Dict[str, Any]] = {}  # trial id -> config columns (merging is slow-ish)
        self.rows: Optional[Dict[Tuple[str, str], Dict[str, Any]]] = None  # results.row_key -> row: the whole table
        self.final: set = set()  # trial ids of this stage whose row will not change
        self.times: Dict[str, Dict[str, datetime]] = {}  # trial id -> started_at, ended_at
        self.row_files: List[str] = []  # written since the table was last rewritten
        self.rewritten_at = -math.inf

    def config_cells(self, trial) -> Dict[str, Any]:
        if trial.trial_id not in self.configs:
            cfg = trial_run_config(self.settings, trial.config)
            config = flatten(resolved(cfg))
            # other methods' groups: null
            self.configs[trial.trial_id] = {key: config.get(key) for key, _ in self.columns}
            self.configs[trial.trial_id]["seeds"] = self.plan.trial_seeds(cfg, trial.config)
        return self.configs[trial.trial_id]

    def note_ended_before(self, trials) -> None:
        """Trials already ended when this run first sees them: finished before a resume."""
        if self.ended_before is None:
            self.ended_before = {t.trial_id for t in trials if t.status in TUNE_ENDED}

    def on_step_begin(self, iteration, trials, **info):
        self.note_ended_before(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.times.setdefault(trial.trial_id, {}).setdefault("started_at", _now())

    def status(self, trial, running: bool = True) -> str:
        """How the trial ended, or PENDING / RUNNING / PAUSED while the sweep runs and UNFINISHED after
        (Tune marks trials it stops on an interrupt TERMINATED; resume=true continues them)."""
        if trial.trial_id in self.statuses:
            return self.statuses[trial.trial_id]
        if trial.trial_id in (self.ended_before or ()):
            return trial_status(trial.last_result or {}, errored=trial.status == Trial.ERROR)
        return trial.status if running else Status.UNFINISHED

    def row(self, trial, running: bool) -> Dict[str, Any]:
        result = trial.last_result or {}
        status = self.status(trial, running)
        row = {"trial_id": trial.trial_id, "status": status, "stage": self.stage,
               "confirms": trial.config.get(CONFIRMS), "node_ip": result.get("node_ip"),
               "node_id": result.get("node_id"), **self.config_cells(trial), **self.trial_times(trial, result)}
        for name, _ in results.METRIC_COLUMNS:
            if name not in row:
                row[name] = result.get(name)
        if status == Status.ERROR:
            row["error"] = _error_text(trial)
        return row

    def trial_times(self, trial, result: Dict[str, Any]) -> Dict[str, Optional[datetime]]:
        """started_at and ended_at as this driver saw them, else as the table held them (a resumed trial started
        under an earlier driver), else from the trial's last report (Tune's ``timestamp`` and ``time_total_s``)."""
        seen = self.times.get(trial.trial_id, {})
        held = (self.rows or {}).get((self.stage, trial.trial_id), {})
        times = {key: seen.get(key) or held.get(key) for key in ("started_at", "ended_at")}
        reported = result.get("timestamp")
        if reported is not None and times["started_at"] is None:
            times["started_at"] = datetime.fromtimestamp(reported - result.get("time_total_s", 0), timezone.utc)
        if reported is not None and times["ended_at"] is None and trial.trial_id in (self.ended_before or ()):
            times["ended_at"] = datetime.fromtimestamp(reported, timezone.utc)
        return times

    def table_rows(self) -> Dict[Tuple[str, str], Dict[str, Any]]:
        """Every row the table holds, read once, before this stage first writes: a resumed search keeps the
        confirmation's rows and its own rows of trials that had ended, the confirmation keeps the search's."""
        if self.rows is None:
            folder = self.plan.folder
            try:
                table = results.read_table(self.plan.sweep_dir) if folder.exists(folder.TABLE) else None
                self.row_files = results.row_files(folder.filesystem, folder.path(folder.TABLE))
            except OSError as error:  # a folder in the table's place
                raise results.write_failed(folder.filesystem, folder.path(folder.TABLE), error, "read") from None
            rows = table.to_pylist() if table is not None else []
            self.rows = {results.row_key(row): row for row in rows}
            self.final = {trial_id for (stage, trial_id), row in self.rows.items() if stage == self.stage
                          and row["status"] in Status.ENDED and trial_id in (self.ended_before or ())}
        return self.rows

    def rewrite(self, trials, running: bool = True) -> None:
        """The whole table: this stage's trials in Tune's order, after (the search) or before (the confirmation)
        the other stage's rows; rows of trials still running built anew, ended ones as they were."""
        rows = self.table_rows()
        for trial in trials:
            if trial.trial_id not in self.final:
                rows[self.stage, trial.trial_id] = self.row(trial, running)
                if trial.trial_id in (self.ended_before or ()):
                    self.final.add(trial.trial_id)
        mine = [rows[self.stage, t.trial_id] for t in trials]
        others = [row for (stage, _), row in rows.items() if stage != self.stage]
        ordered = others + mine if self.stage == Stage.CONFIRM else mine + others
        folder = self.plan.folder
        results.write_table(ordered, self.schema, folder.filesystem, folder.path(folder.TABLE), self.row_files)
        self.row_files, self.rewritten_at = [], time.monotonic()

    def ended(self, trials, trial, status: str) -> None:
        """A trial's row, final: in a row file, or with the whole table when that is due."""
        self.statuses[trial.trial_id] = status
        self.times.setdefault(trial.trial_id, {})["ended_at"] = _now()
        folder = self.plan.folder
        try:
            rows = self.table_rows()
            if time.monotonic() - self.rewritten_at >= self.REWRITE_S:
                self.rewrite(trials)
            else:
                rows[self.stage, trial.trial_id] = row = self.row(trial, running=True)
                self.row_files.append(results.write_row(row, self.schema, folder.filesystem, folder.path(folder.TABLE)))
            self.final.add(trial.trial_id)
        except results.WriteFailed as error:
            self.failed_writes.record(error)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended(trials, trial, trial_status(trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended(trials, trial, Status.ERROR)

    def on_experiment_end(self, trials, **info):
        self.note_ended_before(trials)  # a resumed sweep with nothing left to run takes no step
        try:
            self.rewrite(trials, running=False)
        except results.WriteFailed as error:
            self.failed_writes.record(error)


def _now() -> datetime:
    return datetime.now(timezone.utc)
