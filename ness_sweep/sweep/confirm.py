"""The confirmation stage: when the search has ended, its best configurations (``selection.to_confirm``) rerun on
fresh seeds as parallel Ray trials, in a Tune experiment of their own (``SWEEP/confirm``) that a resume continues.
Their rows carry ``stage=confirm`` and the trial ID of the search row each reruns; Optuna never sees them."""

from __future__ import annotations

import pickle
from typing import Any, Dict, List, Optional

import pyarrow as pa
from ray.tune.search import Searcher

from .. import results, selection
from ..results import Stage, Status
from .plan import CONFIRMS, SweepPlan

CONFIRM_DIR = "confirm"  # the confirmation's Tune experiment, inside the sweep folder


def search_complete(plan: SweepPlan, table: pa.Table) -> bool:
    """Every trial the search planned has ended (an interrupted search is resumed before anything is confirmed)."""
    search = selection.stage_rows(table.to_pylist(), Stage.SEARCH)
    return len(search) >= plan.total_trials and all(row["status"] in Status.ENDED for row in search)


def nothing_left(plan: SweepPlan, table: pa.Table) -> bool:
    """Every trial the search planned and every rerun its confirmation needs have ended, and none failed (a resume
    runs a failed one again): a resume would run nothing."""
    rows = table.to_pylist()
    if not search_complete(plan, table) or any(row["status"] == Status.ERROR for row in rows):
        return False
    reruns = selection.stage_rows(rows, Stage.CONFIRM)
    needed = len(confirmation_configs(plan, table)) if plan.cfg.sweep.confirm_top else 0
    return len(reruns) >= needed and all(row["status"] in Status.ENDED for row in reruns)


def confirmation_configs(plan: SweepPlan, table: pa.Table) -> List[Dict[str, Any]]:
    """One Tune config per (confirmed search row, fresh seed): the row's searched values, the seed, and
    ``CONFIRMS``: the row's trial ID."""
    rows = table.to_pylist()
    chosen = selection.to_confirm(rows, plan.metrics, plan.modes, plan.cfg.sweep.confirm_top,
                                  results.config_columns(table), plan.by_method)
    configs = []
    for row in chosen:
        keys = [*plan.method_space(row["method"]), "method"] if plan.by_method else list(plan.space.search)
        params = {key: row[key] for key in keys if key != "seed"}
        configs.extend({**params, "seed": seed, CONFIRMS: row["trial_id"]} for seed in plan.confirm_seeds)
    return configs


class FixedConfigs(Searcher):
    """Hands out the given configurations in order, then says it has finished."""

    def __init__(self, configs: List[Dict[str, Any]]):
        super().__init__()
        self.configs, self.given = list(configs), 0

    def suggest(self, trial_id: str) -> Optional[Dict[str, Any]]:
        if self.given >= len(self.configs):
            return Searcher.FINISHED
        self.given += 1
        return dict(self.configs[self.given - 1])

    def on_trial_complete(self, trial_id: str, result: Optional[Dict[str, Any]] = None, error: bool = False) -> None:
        pass  # nothing to learn: the configurations are fixed

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump((self.configs, self.given), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.configs, self.given = pickle.load(file)
