"""The sweep's Optuna study on disk (``optuna.db``, SQLite): the searcher that writes it, and where it lives.

Tune pickles the searcher (``tuner.pkl`` at the start, its state at every experiment checkpoint) and a
resume restores it from those pickles. A pickled SQLite storage would reconnect to the path of the run that
pickled it (a staging folder since deleted, or a folder the sweep moved from), so the searcher pickles no
storage: a restored searcher reopens this run's file (``SweepFolder.staged_locally``) and keeps writing the same study.
"""

from __future__ import annotations

import collections
import pickle
from typing import Any, Dict, List, Optional

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

TUNE_TRIAL_ID = "trial_id"  # user attribute of each study trial: the Tune trial (results.parquet's trial_id)
_LIVE = ("_storage", "_ot_study", "_ot_trials")  # a connection to one run's file: never pickled


def sqlite_storage(database: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{database}")


class FinalMetricsOptunaSearch(OptunaSearch):
    """Optuna judges a trial by its final metrics only: per-task reports do not carry them, and a trial
    the scheduler stopped early (or that diverged) counts as pruned, one that raised as failed. The study's
    COMPLETE trials are the table's TERMINATED rows, across resumes too."""

    database: Optional[str] = None  # the SQLite file this run writes; None: in memory

    @property
    def _metrics(self) -> List[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    def _complete(self, result: Optional[Dict[str, Any]]) -> bool:
        return bool(result) and all(result.get(m) is not None for m in self._metrics)

    def _ended_in_study(self, trial_id: str) -> Optional[TrialState]:
        """The study trial's state when it has ended already: a resume runs again a trial whose end the
        study recorded after Tune's last checkpoint, or (resume_errored) one that had failed."""
        trial = self._ot_trials.get(trial_id)
        if trial is None:
            return None
        state = self._ot_study._storage.get_trial(trial._trial_id).state
        return state if state.is_finished() else None

    def suggest(self, trial_id: str) -> Optional[Dict]:
        self._open_study()
        new = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if new:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: Dict[str, Any]) -> None:
        self._open_study()
        if self._complete(result) and self._ended_in_study(trial_id) is None:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict[str, Any]] = None, error: bool = False) -> None:
        self._open_study()
        if trial_id not in self._ot_trials:  # a URI sweep's driver died before copying its study back
            return
        result = result if self._complete(result) else None
        ended = self._ended_in_study(trial_id)
        if ended is None:
            super().on_trial_complete(trial_id, result, error)
        elif result and ended != TrialState.COMPLETE:  # failed before, finished now: record the finish
            self._record_finish_again(trial_id, result)
        self._completed_trials.add(trial_id)

    def _record_finish_again(self, trial_id: str, result: Dict[str, Any]) -> None:
        earlier = self._ot_study._storage.get_trial(self._ot_trials[trial_id]._trial_id)
        self._ot_study.add_trial(optuna.trial.create_trial(
            params=earlier.params, distributions=earlier.distributions, user_attrs={TUNE_TRIAL_ID: trial_id},
            values=[result[m] for m in self._metrics], state=TrialState.COMPLETE))

    # ---- pickling: Tune saves the search, never the connection ----------------------------------

    def __getstate__(self) -> Dict[str, Any]:
        """The search without its connection; ``database`` stays, and a resume sets its own."""
        state = {key: value for key, value in self.__dict__.items() if key not in _LIVE}
        if self._ot_study is not None:
            state["_sampler"] = self._ot_study.sampler  # its random state: a resume proposes as the sweep would
            state["_trial_ids"] = {tune_id: trial._trial_id for tune_id, trial in self._ot_trials.items()}
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._storage, self._ot_study, self._ot_trials = None, None, {}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)

    def restore(self, checkpoint_path: str) -> None:
        database = self.database
        with open(checkpoint_path, "rb") as file:
            self.__setstate__(pickle.load(file))
        self.database = database

    def _open_study(self) -> None:
        """After a restore: open this run's file, take the trials the saved search knows back, and fail the
        study's running trials it does not know (asked after Tune's last checkpoint, before the driver died)."""
        if self._ot_study is not None:
            return
        self._storage = sqlite_storage(self.database) if self.database else None
        self._setup_study(self._mode)
        study = self._ot_study
        stored = {trial._trial_id: trial for trial in study.get_trials(deepcopy=False)}
        self._ot_trials = {tune_id: optuna.trial.Trial(study, optuna_id)
                           for tune_id, optuna_id in getattr(self, "_trial_ids", {}).items() if optuna_id in stored}
        known = {trial._trial_id for trial in self._ot_trials.values()}
        for optuna_id, trial in stored.items():
            if trial.state == TrialState.RUNNING and optuna_id not in known:
                study.tell(trial.number, state=TrialState.FAIL)


class PerMethodSearch(Searcher):
    """A sweep over methods: one Optuna study per method (``SWEEP/METHOD`` in optuna.db), taking turns, so each
    method gets ``per_method`` trials and a TPE that learns from its own trials only. One TPE over all methods
    would give them unequal budgets (it favours the method that looks best early) and share one learning rate
    model across methods whose good rates differ."""

    def __init__(self, searchers: Dict[str, FinalMetricsOptunaSearch], per_method: int, metric, mode):
        super().__init__(metric=metric, mode=mode)
        self.searchers, self.per_method = searchers, per_method
        self.method_of: Dict[str, str] = {}  # Tune trial id -> the method whose study proposed it
        self._database: Optional[str] = None

    @property
    def database(self) -> Optional[str]:
        return self._database

    @database.setter
    def database(self, path: Optional[str]) -> None:
        """This run's copy of optuna.db, for every method's study."""
        self._database = path
        for searcher in self.searchers.values():
            searcher.database = path

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
            pickle.dump({"searchers": self.searchers, "method_of": self.method_of}, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            state = pickle.load(file)
        self.searchers, self.method_of = state["searchers"], state["method_of"]
        self.database = self._database
