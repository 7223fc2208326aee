"""The sweep's Optuna study on disk (``optuna.journal``, Optuna's journal file): the searcher that writes it, and a
resume's check of it (which first migrates the SQLite ``optuna.db`` of a sweep begun before the journal).

The searcher drives Optuna through its public ask-and-tell API: ``study.ask`` proposes, each task's report becomes
an intermediate value, ``study.tell`` records how the trial ended. What ``optuna-dashboard`` shows is then the
sweep: objectives by name, learning curves up to where ASHA stopped a trial, and on each trial its Tune trial ID
and the ``ness_sweep.train`` line that reruns it.

The journal appends one JSON line per operation: ~8 ms of driver time per trial (ask, two user attributes, five
intermediate values, tell) where SQLite spent ~45 ms in its commits, on the driver's one thread that also runs Tune.

Tune pickles the searcher (``tuner.pkl`` at the start, its state at every experiment checkpoint) and a resume
restores it from those pickles. A pickled storage would reopen the path of the run that pickled it
(a staging folder since deleted, or a folder the sweep moved from), so the searcher pickles no connection: the
driver attaches the restored searcher to this run's file (``SweepFolder.staged_locally``) and it keeps writing
the same study, its TPE sampler continuing from its pickled random state.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import pickle
import shutil
import tempfile
import warnings
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import optuna
import pyarrow.fs as pafs
from optuna.trial import TrialState
from ray.tune.search import Searcher

from ..config import UserError, first_line
from ..leaderboard import train_command
from ..optuna_journal import TPE_STARTUP_TRIALS, journal_storage, opened_study, quiet_optuna
from ..results import Stage, Status, SweepFolder, WriteFailed, write_atomically
from ..selection import stage_rows
from .callbacks import FailedWrites, ResultsTable
from .plan import SweepPlan

TUNE_TRIAL_ID = "trial_id"  # user attribute of each study trial: the Tune trial (results.parquet's trial_id)
RERUN_COMMAND = "rerun"  # user attribute of each study trial: the line that reruns it (leaderboard.train_command)
INTERMEDIATE_VALUES = "intermediate_values"  # user attribute of the study: what its trials' intermediate values are
# this run's own: never pickled
_LIVE = ("_study", "_storage", "_trials", "_reported", "_rerun", "journal", "failed_writes")
# What a failed write of the journal raises: the file system's errors (opening, appending, fsync, Optuna's lock
# file beside it). Optuna wraps none of them; its lock raises RuntimeError only when another writer took the lock
# away, which one driver per sweep folder (sweep/lock.py) rules out.
STORAGE_ERRORS = (OSError,)
SQLITE_STUDY = "optuna.db"  # the study's file (SQLite) before the journal: a resume migrates it once
# with SQLite's rollback journal, which a driver killed mid-commit leaves beside it (SQLite rolls it back on opening)
SQLITE_FILES = (SQLITE_STUDY, f"{SQLITE_STUDY}-journal")


def storage_failure(journal: Optional[str], error: Exception) -> WriteFailed:
    """``cannot write .../optuna.journal (No space left on device)``: the file and the cause, in one line."""
    return WriteFailed(f"cannot write {journal or 'the in-memory study'} ({first_line(error)})")


def cut_torn_line(journal: str) -> None:
    """A driver killed while appending can leave the journal's last line incomplete. Optuna reads past such a
    line, but its next append would continue that line, garbling both records (that write fails, and so would every
    later read of the journal): the incomplete line, an operation its caller never saw done, is cut off before this
    run writes."""
    if not os.path.exists(journal):
        return
    with open(journal, "rb+") as file:
        logged = file.read()  # as much as Optuna reads when it opens the journal
        if logged and not logged.endswith(b"\n"):
            file.truncate(logged.rfind(b"\n") + 1)


def tune_objective(plan: SweepPlan) -> Tuple[Any, Any]:
    """Metric and mode as Tune's searchers take them: one name and mode, or lists for several objectives."""
    return (plan.metrics, plan.modes) if len(plan.metrics) > 1 else (plan.metrics[0], plan.modes[0])


def study_name(plan: SweepPlan, method: Optional[str] = None) -> str:
    """The sweep's name; in a sweep over methods each method's study is ``SWEEP/METHOD``."""
    return plan.name if method is None else f"{plan.name}/{method}"


def study_names(plan: SweepPlan) -> List[str]:
    """Every study the sweep writes into its journal."""
    if not plan.by_method:
        return [study_name(plan)]
    return [study_name(plan, str(method)) for method in plan.space.search["method"].values]


def rerun_line(plan: SweepPlan) -> Callable[[str, Dict[str, Any]], str]:
    """The ``ness_sweep.train`` line that reruns a Tune trial of the search from its config:
    ``leaderboard.train_command`` on the row the results table holds for it (its config cells, and an empty table
    of the table's schema)."""
    rows = ResultsTable(plan)
    table = rows.schema.empty_table()
    return lambda trial_id, config: train_command(
        rows.config_cells(SimpleNamespace(trial_id=trial_id, config=config)), table)


class StudySearch(Searcher):
    """One Optuna study proposing the sweep's trials (TPE, seeded by ``sweep.seed``).

    Optuna judges a trial by its final metrics only: a trial the scheduler stopped early (or that diverged)
    counts as PRUNED, one that raised as FAIL. The study's COMPLETE trials are the table's TERMINATED rows,
    across resumes too. Each task's ``plan.signal`` (``valid_acc_seen``, what ASHA compares) is the trial's
    intermediate value at step = the task's number, for a single objective to maximise only: Optuna refuses
    intermediate values in a multi-objective study, and its TPE ranks pruned trials by their last intermediate
    value in the objective's direction (the signal is better high). A pruned trial's value is that last
    intermediate value (Optuna's rule): the study says so in its ``intermediate_values`` user attribute.
    """

    def __init__(self, plan: SweepPlan, space: Dict[str, Any], method: Optional[str] = None):
        super().__init__(*tune_objective(plan))
        self.space = {key: dist.to_optuna() for key, dist in space.items()}
        self.name = study_name(plan, method)
        self.directions = ["maximize" if mode == "max" else "minimize" for mode in plan.modes]
        self.metrics = list(plan.metrics)
        self.signal = plan.signal if plan.modes == ["max"] else None
        self.method = method  # a study of a sweep over methods: the Tune config's ``method``, for the rerun line
        self.sampler = optuna.samplers.TPESampler(seed=plan.cfg.sweep.seed, n_startup_trials=TPE_STARTUP_TRIALS)
        self.numbers: Dict[str, int] = {}  # Tune trial id -> study trial number
        self.journal: Optional[str] = None
        self.failed_writes: Optional[FailedWrites] = None
        self._study: Optional[optuna.Study] = None

    def attach(self, plan: SweepPlan, journal: Optional[str], failed_writes: Optional[FailedWrites] = None) -> None:
        """Write the study in the journal file ``journal`` (None: in memory): this run's file, also after a resume.
        A write that fails goes to ``failed_writes``, which ends the run (Tune would blame the trial whose
        event the searcher was handling); without it, it raises."""
        self.journal, self._rerun, self.failed_writes = journal, rerun_line(plan), failed_writes
        self._study = None

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around every call that writes the journal: a failure is the driver's, one line naming the file."""
        try:
            yield
        except STORAGE_ERRORS as error:
            failure = storage_failure(self.journal, error)
            if self.failed_writes is None:
                raise failure from None
            self.failed_writes.record(failure)

    def open(self) -> optuna.Study:
        """The study, opened on first use (after ``attach``, and after a restore: Tune restores the saved search
        first). The trials the searcher knows are taken back (those the file holds), and the study's running
        trials it does not know are failed (asked after Tune's last checkpoint, before the driver died)."""
        if self._study is not None:
            return self._study
        if self.journal:
            cut_torn_line(self.journal)
        self._storage = journal_storage(self.journal) if self.journal else optuna.storages.InMemoryStorage()
        with quiet_optuna():
            study = optuna.create_study(storage=self._storage, sampler=self.sampler, pruner=optuna.pruners.NopPruner(),
                                        study_name=self.name, directions=self.directions, load_if_exists=True)
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2: optuna-dashboard reads it all the same
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(self.metrics)
        if self.signal:
            study.set_user_attr(INTERMEDIATE_VALUES, f"{self.signal} after each task (step: the task's number); a "
                                                     "pruned trial's value is its last one")
        stored = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
        self.numbers = {tune_id: number for tune_id, number in self.numbers.items()
                        if number in stored and stored[number].user_attrs.get(TUNE_TRIAL_ID) == tune_id}
        self._trials: Dict[str, optuna.Trial] = {}
        self._reported = {tune_id: set(stored[number].intermediate_values) for tune_id, number in self.numbers.items()}
        known = set(self.numbers.values())
        for number, trial in stored.items():
            if trial.state == TrialState.RUNNING and number not in known:
                study.tell(number, state=TrialState.FAIL)
        self._study = study
        return study

    def _stored(self, trial_id: str) -> optuna.trial.FrozenTrial:
        """The study trial of a Tune trial as the file holds it now."""
        self.open()
        return self._storage.get_trial(self._storage_id(trial_id))

    def _storage_id(self, trial_id: str) -> int:
        study_id = self._storage.get_study_id_from_name(self.name)
        return self._storage.get_trial_id_from_study_id_trial_number(study_id, self.numbers[trial_id])

    def _trial(self, trial_id: str) -> optuna.Trial:
        """The running study trial of a Tune trial (after a resume, found by its number)."""
        if trial_id not in self._trials:
            self._trials[trial_id] = optuna.trial.Trial(self.open(), self._storage_id(trial_id))
        return self._trials[trial_id]

    def suggest(self, trial_id: str) -> Optional[Dict]:
        with self.writing():
            return self._suggest(trial_id)
        return None  # the journal could not be written: no trial, and the run ends at its next step

    def on_trial_result(self, trial_id: str, result: Dict[str, Any]) -> None:
        with self.writing():
            self._on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict[str, Any]] = None, error: bool = False) -> None:
        with self.writing():
            self._on_trial_complete(trial_id, result, error)

    def _suggest(self, trial_id: str) -> Optional[Dict]:
        study = self.open()
        if trial_id in self.numbers:
            return dict(self._stored(trial_id).params)
        trial = study.ask(self.space)
        config = dict(trial.params)
        trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        trial.set_user_attr(RERUN_COMMAND, self._rerun(trial_id, {**config, **self._fixed()}))
        self.numbers[trial_id], self._trials[trial_id], self._reported[trial_id] = trial.number, trial, set()
        return config

    def _fixed(self) -> Dict[str, Any]:
        return {"method": self.method} if self.method else {}

    def _curve(self, result: Dict[str, Any]) -> Dict[int, float]:
        """The signal after each task the trial has finished, by the task's number: every report carries the
        curve so far (``valid_acc_seen_per_task``: index i is task i + 1); a value that is not finite is left out."""
        values = (result.get(f"{self.signal}_per_task") or []) if self.signal else []
        return {task: value for task, value in enumerate(values, start=1) if _finite(value)}

    def _on_trial_result(self, trial_id: str, result: Dict[str, Any]) -> None:
        """The signal of every task of the report's curve that the study lacks (a trial resumed elsewhere, or
        restored by a resume, reports its curve from task 1)."""
        if self.signal is None or trial_id not in self.numbers or self._stored(trial_id).state.is_finished():
            return
        reported = self._reported[trial_id]
        for task, value in self._curve(result).items():
            if task not in reported:
                self._trial(trial_id).report(value, task)
                reported.add(task)

    def _on_trial_complete(self, trial_id: str, result: Optional[Dict[str, Any]], error: bool) -> None:
        if trial_id not in self.numbers:  # a URI sweep's driver died before copying its study back
            return
        values = [result[m] for m in self.metrics] if result and all(_finite(result.get(m)) for m in self.metrics) \
            else None
        if result:
            self._on_trial_result(trial_id, result)  # Tune passes the result that ends a trial here only
        ended = self._stored(trial_id)
        study = self.open()
        if not ended.state.is_finished():
            state = TrialState.COMPLETE if values else TrialState.FAIL if error else TrialState.PRUNED
            study.tell(self.numbers[trial_id], values, state=state)
        elif values and ended.state != TrialState.COMPLETE:  # failed before, finished now: record the finish
            self._record_finish_again(trial_id, ended, values, result)

    def _record_finish_again(self, trial_id: str, earlier: optuna.trial.FrozenTrial, values: List[float],
                             result: Dict[str, Any]) -> None:
        """A trial that failed (or was failed when a driver died) and that a resume ran to its end: a new
        COMPLETE study trial with its params, user attributes and learning curve, which the Tune trial maps to."""
        curve = self._curve(result)
        study = self.open()
        study.add_trial(optuna.trial.create_trial(
            params=earlier.params, distributions=earlier.distributions, user_attrs=earlier.user_attrs,
            values=values, intermediate_values=curve, state=TrialState.COMPLETE))
        self.numbers[trial_id] = len(study.get_trials(deepcopy=False)) - 1
        self._trials.pop(trial_id, None)
        self._reported[trial_id] = set(curve)

    # ---- pickling: Tune saves the search, never the connection ----------------------------------

    def get_state(self) -> Dict[str, Any]:
        """The search without this run's connection, file and rerun line: ``attach`` gives a restored one its own."""
        return {key: value for key, value in self.__dict__.items() if key not in _LIVE}

    def set_state(self, state: Dict[str, Any]) -> None:
        """The search as saved, still attached to this run's file (reopened on next use)."""
        self.__dict__.update(state)
        self._study = None

    def __getstate__(self) -> Dict[str, Any]:
        return self.get_state()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.journal, self._study = None, None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.get_state(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.set_state(pickle.load(file))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class PerMethodSearch(Searcher):
    """A sweep over methods: one Optuna study per method (``SWEEP/METHOD`` in the journal), taking turns, so each
    method gets ``per_method`` trials and a TPE that learns from its own trials only. One TPE over all methods
    would give them unequal budgets (it favours the method that looks best early) and share one learning rate
    model across methods whose good rates differ."""

    def __init__(self, plan: SweepPlan, searchers: Dict[str, StudySearch]):
        super().__init__(*tune_objective(plan))
        self.searchers, self.per_method = searchers, plan.num_samples
        self.method_of: Dict[str, str] = {}  # Tune trial id -> the method whose study proposed it

    def attach(self, plan: SweepPlan, journal: Optional[str], failed_writes: Optional[FailedWrites] = None) -> None:
        """This run's copy of the journal, for every method's study."""
        for searcher in self.searchers.values():
            searcher.attach(plan, journal, failed_writes)

    def open(self) -> None:
        for searcher in self.searchers.values():
            searcher.open()

    def suggest(self, trial_id: str) -> Optional[Dict]:
        """The next method in turn (the one with the fewest trials, in the space's order) proposes."""
        counts = collections.Counter(self.method_of.values())
        waiting = [method for method in self.searchers if counts[method] < self.per_method]
        if not waiting:
            return Searcher.FINISHED
        method = min(waiting, key=lambda m: counts[m])
        params = self.searchers[method].suggest(trial_id)
        if params is None:
            return None
        self.method_of[trial_id] = method
        return {**params, "method": method}

    def on_trial_result(self, trial_id: str, result: Dict[str, Any]) -> None:
        if trial_id in self.method_of:
            self.searchers[self.method_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict[str, Any]] = None, error: bool = False) -> None:
        if trial_id in self.method_of:
            self.searchers[self.method_of[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump({"searchers": {m: s.get_state() for m, s in self.searchers.items()},
                         "method_of": self.method_of}, file)

    def restore(self, checkpoint_path: str) -> None:
        """Each method's search as saved, still attached to this run's file."""
        with open(checkpoint_path, "rb") as file:
            state = pickle.load(file)
        for method, saved in state["searchers"].items():
            self.searchers[method].set_state(saved)
        self.method_of = state["method_of"]


def settle_study(plan: SweepPlan, journal: Optional[str], rows: List[Dict[str, Any]],
                 out: Callable[[str], None]) -> None:
    """After the search: every finished search row (``rows``, the table's) is a COMPLETE study trial with the row's
    objective values. A trial whose end reached the table but not the study (a driver killed between Tune telling
    the searcher and the searcher writing the journal, then resumed) is recorded from its row: told when its study
    trial still runs, else added as COMPLETE with that trial's params, attributes and learning curve; one line
    says so. The table is the record and the study mirrors it, which the searcher alone cannot promise across
    kills."""
    if not journal:
        return
    try:
        _settle(plan, journal, rows, out)
    except STORAGE_ERRORS as error:
        raise storage_failure(journal, error) from None


def _settle(plan: SweepPlan, journal: str, rows: List[Dict[str, Any]], out: Callable[[str], None]) -> None:
    storage = journal_storage(journal)
    finished = [row for row in stage_rows(rows, Stage.SEARCH) if row["status"] == Status.TERMINATED]
    for name in study_names(plan):
        with quiet_optuna():
            study = optuna.load_study(study_name=name, storage=storage)
        by_trial = collections.defaultdict(list)
        for trial in study.get_trials(deepcopy=False):
            by_trial[trial.user_attrs.get(TUNE_TRIAL_ID)].append(trial)
        for row in finished:
            if plan.by_method and name != study_name(plan, str(row.get("method"))):
                continue
            values = [row.get(metric) for metric in plan.metrics]
            trials = by_trial.get(row["trial_id"], [])
            if not trials or not all(_finite(v) for v in values) or \
                    any(t.state == TrialState.COMPLETE for t in trials):
                continue
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if running:
                study.tell(running[0].number, values)
            else:
                earlier = trials[-1]
                study.add_trial(optuna.trial.create_trial(
                    params=earlier.params, distributions=earlier.distributions, user_attrs=earlier.user_attrs,
                    values=values, intermediate_values=earlier.intermediate_values, state=TrialState.COMPLETE))
            out(f"{os.path.basename(journal)}: trial {row['trial_id']} recorded as COMPLETE from its row in the "
                "table (its end reached the table but not the study before a driver was killed)")


def migrate_sqlite_study(folder: SweepFolder, out: Callable[[str], None]) -> None:
    """A sweep begun before the journal keeps its study in SQLite (``optuna.db``): every study in it is copied once
    into the journal with Optuna's ``copy_study`` (trials in their order, values, intermediate values, attributes,
    objective names), and the sweep writes the journal from then on. optuna.db is read from a private copy and
    kept as it was (with its rollback journal when a killed driver left one); the new journal is built aside and
    moved in whole, so a migration that fails changes nothing."""
    old, new = folder.shown(SQLITE_STUDY), folder.shown(folder.OPTUNA)
    with tempfile.TemporaryDirectory(prefix="ness_sweep_migration_") as scratch:
        journal = os.path.join(scratch, folder.OPTUNA)
        try:
            for name in (name for name in SQLITE_FILES if folder.exists(name)):
                with folder.filesystem.open_input_stream(folder.path(name)) as source, \
                        open(os.path.join(scratch, name), "wb") as copy:
                    shutil.copyfileobj(source, copy)
            sqlite, target = optuna.storages.RDBStorage(f"sqlite:///{scratch}/{SQLITE_STUDY}"), journal_storage(journal)
            with quiet_optuna():
                for name in optuna.get_all_study_names(sqlite):
                    optuna.copy_study(from_study_name=name, from_storage=sqlite, to_storage=target)
            sqlite.engine.dispose()
        except Exception as error:  # sqlite3, SQLAlchemy and Optuna each raise their own types
            raise UserError(f"resume=true: {old} (the sweep's Optuna study in SQLite) cannot be migrated to {new} "
                            f"({first_line(error)}); put back a good copy, or start a new sweep") from None
        with open(journal, "rb") as logged:
            write_atomically(folder.filesystem, folder.path(folder.OPTUNA), logged.read())
    out(f"{old}: the sweep's Optuna study, in SQLite as an earlier ness_sweep wrote it, is migrated to {new}, "
        f"which the sweep writes from now on ({SQLITE_STUDY} is kept as it was)")


def check_resumable_study(plan: SweepPlan, out: Callable[[str], None]) -> None:
    """Before a resume starts Ray: the sweep's journal is there and opens, with every study the sweep writes (a
    sweep that has only the SQLite optuna.db of an earlier ness_sweep is migrated first).

    A missing or unreadable journal is refused in one line (UserError), nothing changed: continuing would give TPE
    an empty study and break the record that the study's COMPLETE trials are the table's finished rows. A journal
    whose last line is incomplete (a driver killed while appending) opens: Optuna reads past that line and the
    searcher cuts it off before writing (``cut_torn_line``). A sweep folder on a URI receives its journal when a
    driver ends; one killed in its first run left none there: that resume continues with a new study, and says so.
    """
    folder = plan.folder
    shown = folder.shown(folder.OPTUNA)
    if not folder.exists(folder.OPTUNA) and folder.exists(SQLITE_STUDY):
        migrate_sqlite_study(folder, out)
    if not folder.exists(folder.OPTUNA):
        if isinstance(folder.filesystem, pafs.LocalFileSystem):
            raise UserError(f"resume=true: {shown} is missing: the sweep's Optuna study (the trials TPE learns from) "
                            "is gone; put the file back, or start a new sweep")
        out(f"warning: {shown} is missing (the driver that started the sweep was killed before copying its study "
            "there): the resume continues with a new Optuna study, and TPE learns from the trials that end from now on")
        return
    for name in study_names(plan):
        with opened_study(folder.filesystem, folder.path(), name) as (study, why):
            if study is None:
                raise UserError(f"resume=true: {shown} cannot be continued ({why}); put back a good copy, or start "
                                "a new sweep")
