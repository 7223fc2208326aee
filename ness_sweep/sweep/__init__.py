"""Sweeps on Ray Tune, in parts that each own one thing (imports point down the list):

- ``space``: search-space files, parsed and checked without Ray, torch or Optuna;
- ``columns``, ``code``, ``lock``: the table's column types, the user's own code, the folder's one driver;
- ``preflight``: what the machine or cluster can run (CPUs, a trial's request, trials at once), before Ray;
- ``plan``: everything decided before any work, and the plan a resume continues; ``preview``: ``dry_run=true``;
- ``trial`` and ``checkpoints``: the worker side, one trial through its own task stream on each seed, and the
  checkpoints it restores from (pruned by the driver as trials end);
- ``callbacks`` and ``dashboards``: the driver side, the output lines, the results table, W&B runs;
- ``progress``: live progress, trials posting epochs to a small actor that the driver reads;
- ``study`` and ``confirm``: the search's Optuna study, and the confirmation's fixed reruns;
- ``tune_internals``: the one place that touches a private attribute of Ray Tune;
- ``tuner``: Ray and the Tuner; ``driver``: one sweep from settings to results (the Python API);
- ``__main__``: ``python -m ness_sweep.sweep`` (also ``python -m ness_sweep.run``).

``ness_sweep.sweep(...)`` itself runs a sweep: see ``driver.sweep``.
"""

from __future__ import annotations

from .. import callable_module


def _sweep(*args, **settings):
    from .driver import sweep  # on first call: the torch-free modules above import without Ray

    return sweep(*args, **settings)


callable_module(__name__, _sweep)
