"""The one place the sweep reaches past Ray Tune's public API.

A restored ``tune.Tuner`` runs with the callbacks, failure limits and concurrency pickled when its experiment
started, and Tune offers no public way to give it this run's (a new W&B folder, a new output, the limits a resume
may change: ``plan.RESUME_MAY_CHANGE``). ``Tuner.restore`` builds a local tuner whose run and tune settings this
module replaces. pyproject.toml admits only the Ray releases the tests run (the resume tests exercise this), so a
release that renames these attributes fails the tests, not a user's resume.
"""

from __future__ import annotations

from typing import Optional

from ray import tune
from ray.tune.search import Searcher


def replace_run_settings(tuner: tune.Tuner, callbacks: list, failures: tune.FailureConfig,
                         max_concurrent_trials: int) -> Optional[Searcher]:
    """Give a restored tuner this run's callbacks, failure limits and concurrency; returns the search algorithm it
    restored (None for a tuner that runs elsewhere, through Ray Client)."""
    local = tuner._local_tuner
    if local is None:
        return None
    local.get_run_config().callbacks = callbacks
    local.get_run_config().failure_config = failures
    local._tune_config.max_concurrent_trials = max_concurrent_trials
    return local._tune_config.search_alg
