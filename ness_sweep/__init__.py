"""ness_sweep: hyperparameter sweeps of NESS (null-space continual learning) on Ray Tune.

The Python API takes the command line's settings and returns results:

    import ness_sweep
    run = ness_sweep.train("method=finetune", seeds=[0, 1])    # -> ness_sweep.train.TrainResult
    found = ness_sweep.sweep(space="smoke", train={"epochs": 2})  # -> ness_sweep.sweep.driver.SweepResult

``ness_sweep.train`` and ``ness_sweep.sweep`` are the modules behind ``python -m ness_sweep.train`` and the
sweep command, and each can be called as its own function. Both load on first use, so importing the package
(or the torch-free parts such as ``ness_sweep.sweep.space``) costs nothing.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Callable

API = ("train", "sweep")


def callable_module(module_name: str, function: Callable) -> None:
    """Make the module ``module_name`` callable as ``function``: ``ness_sweep.train(...)`` runs one training
    while ``python -m ness_sweep.train`` and ``from ness_sweep.train import TrainResult`` keep working."""

    class CallableModule(types.ModuleType):
        __doc__ = function.__doc__

        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule


def __getattr__(name: str) -> types.ModuleType:
    if name in API:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
