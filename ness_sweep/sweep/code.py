"""The code a sweep's trials run: the benchmark, model and method its settings name, checked before any work,
and the user's own modules among them, which Ray ships to a cluster's nodes.

A trial names its code by setting (``benchmark=my_pkg.streams:make_stream``, ``model=my_nets:build``), fixed
or searched with ``choice``. Every value the sweep may give is resolved in the driver before Ray starts, so a
bad name is one line, not an error in every trial; the model is built on each stream it may train on.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple

from omegaconf import DictConfig

from ..benchmarks import check_benchmark
from ..config import resolved
from ..data import TaskStream
from ..methods import check_fits, check_method, run_config
from ..models import build_model, check_model, model_label
from ..user_code import check_model_trains, local_module_paths

CODE_KEYS = ("benchmark", "model", "method")


def code_options(cfg: DictConfig, search: Dict[str, Any]) -> Dict[str, List[str]]:
    """Every value each of benchmark, model and method may take in the sweep: its choices, or the fixed one."""
    return {key: list(search[key].values) if key in search else [str(cfg[key])] for key in CODE_KEYS}


def check_code(cfg: DictConfig, search: Dict[str, Any]) -> None:
    """Resolve every benchmark, model and method the sweep may use (imports the user's modules, reads no data)."""
    options = code_options(cfg, search)
    for name in options["benchmark"]:
        check_benchmark(str(name))
    for name in options["model"]:
        check_model(str(name))
    for name in options["method"]:
        check_method(str(name))


def check_models_fit(variants: Iterable[Tuple[DictConfig, TaskStream]], search: Dict[str, Any]) -> None:
    """Build each model option on each loaded stream (a run config that makes it, and the stream) and run two
    samples of every task through it, under each method, then one training step on the largest batch a trial
    may use, before Ray starts: a model that cannot take a benchmark's inputs, or cannot train, is one line,
    not an error in every trial."""
    for cfg, stream in variants:
        options = code_options(cfg, search)
        searched = search.get("train.batch_size")
        batch_size = int(max(searched.values)) if searched else cfg.train.batch_size
        for model in options["model"]:
            for method in options["method"]:
                run = run_config(resolved(cfg), {"model": model, "method": method})
                check_fits(run, stream)
            check_model_trains(build_model(model, stream), stream, batch_size, model_label(run, stream))


def shipped_modules(cfg: DictConfig, search: Dict[str, Any], streams: Iterable[TaskStream]) -> List[str]:
    """The user's modules that trials import (benchmarks, models, methods, a stream's default model), as local
    paths for Ray's ``runtime_env`` ``py_modules``: a cluster's nodes get them without sharing a file system."""
    options = code_options(cfg, search)
    names = [*options["benchmark"], *options["model"], *options["method"],
             *(stream.default_model for stream in streams)]
    return local_module_paths(str(name) for name in names)
