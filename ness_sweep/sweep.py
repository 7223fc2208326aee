"""Sweeps on Ray Tune: search spaces, the trial, and the Tuner that runs them.

``build_plan`` turns the command line and a space file into a validated ``SweepPlan`` before any work.
``run_sweep`` loads the task stream once, starts (or joins) Ray, and runs one Tune trial per configuration
Optuna proposes. Each trial trains through the stream and reports after every task; callbacks in the
driver print one line per finished trial, keep one W&B run per trial and rewrite the Parquet table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import posixpath
import random
import socket
import tempfile
import threading
import time
import typing
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

# Ray reads this once, when imported: "0" binds a local Ray to 127.0.0.1 only. Joining a cluster
# (RAY_ADDRESS, or ray.address through ness_sweep.run, which decides before importing this module)
# keeps the environment's setting.
if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from . import dashboards, results  # noqa: E402
from .config import (UserError, RunConfig, SweepConfig, SweepSettings, flatten, joins_cluster,  # noqa: E402
                     load_preset, merge_onto, parse_overrides, resolved, validate_run, validate_sweep)
from .data import STREAM_KEYS, TaskStream, check_stream, stream_for, stream_settings  # noqa: E402
from .train import mean_std  # noqa: E402
from .trainer import Trainer  # noqa: E402
from .metrics import seen_accuracy  # noqa: E402

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
SPACE_SECTIONS = ("description", "search", "fixed", "sweep")
NATURAL_MODE = {"acc": "max", "bwt": "max", "forgetting": "min"}  # the sweep's possible objectives
DEFAULT_NUM_SAMPLES = 10
PLAN_FILE = "plan.yaml"  # the resolved plan, written when a sweep starts; resume=true continues it
# Keys a resume may change: where and how fast the sweep runs, never what a trial trains.
RESUME_MAY_CHANGE = ("resume", "output_dir", "sweep.name", "sweep.max_concurrent", "ray.address", "wandb.mode",
                     "trial.max_failures")
MAX_STREAMS = 16  # distinct task streams a sweep may hold in Ray's object store (searched stream-shaping keys)
CLUSTER_CONNECT_TIMEOUT_S = 30.0
# Run-config keys that are not columns of the results table: seeds get their own column, the rest
# only steer a single run's command line.
NOT_COLUMNS = ("seed", "seeds", "output", "preset")
# Tune's defaults cost time per trial and print a status table; the sweep replaces both.
TUNE_ENVIRONMENT = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # per-trial CSV/JSON/TensorBoard files: ~0.1 s a trial
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the classic reporter prints nothing
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # acc, bwt, forgetting come only with the last task
}


# ---- search spaces ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Distribution:
    """One searched key's distribution, as the space file states it."""

    kind: str  # one of DISTRIBUTIONS
    values: Tuple[Any, ...]  # (low, high) for loguniform / uniform / int (inclusive); the options for choice

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "choice":
            return optuna.distributions.CategoricalDistribution(self.values)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(*self.values)
        return optuna.distributions.FloatDistribution(*self.values, log=self.kind == "loguniform")


@dataclass
class SearchSpace:
    name: str
    source: str  # the file, for error messages
    description: str
    search: Dict[str, Distribution]
    fixed: Dict[str, Any]  # dotted run-config key -> value
    sweep: Dict[str, Any]  # sweep.* defaults (num_samples, metric, mode, ...)


def shipped_space_dir():
    """``search_spaces/``: package ``ness_sweep.search_spaces`` when installed, beside the package in a checkout."""
    try:
        return resources.files("ness_sweep.search_spaces")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "search_spaces"


def known_spaces() -> List[str]:
    return sorted(entry.name[:-5] for entry in shipped_space_dir().iterdir() if entry.name.endswith(".yaml"))


def load_space(name: str) -> SearchSpace:
    """A shipped space by name, or a user's space file by path (``*.yaml``)."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"space={name}: no such file")
        text, source, stem = path.read_text(), str(path), path.stem
    else:
        entry = shipped_space_dir() / f"{name}.yaml"
        if not entry.is_file():
            raise UserError(f"space={name}: no such space; known spaces: {', '.join(known_spaces())} "
                              "(or a path to a .yaml file)")
        text, source, stem = entry.read_text(), f"search_spaces/{name}.yaml", name
    try:
        raw = OmegaConf.to_container(OmegaConf.create(text))  # OmegaConf's YAML reads 1e-4 as a float
    except Exception as error:  # YAML syntax errors come in many types
        raise UserError(f"{source}: not valid YAML: {_first_line(error)}") from None
    return parse_space(raw, source, stem)


def parse_space(raw: Any, source: str, name: str) -> SearchSpace:
    """Check the file's structure and every distribution; keys are checked against the schema in build_plan."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: must be a mapping with sections {', '.join(SPACE_SECTIONS)}")
    for section in raw:
        if section not in SPACE_SECTIONS:
            raise UserError(f"{source}: unknown section {section!r}; valid: {', '.join(SPACE_SECTIONS)}")
    search = raw.get("search")
    if not isinstance(search, dict) or not search:
        raise UserError(f"{source}: search: must map at least one key to a distribution, "
                          "e.g. train.lr: {loguniform: [1.0e-3, 0.3]}")
    for section in ("fixed", "sweep"):
        if not isinstance(raw.get(section) or {}, dict):
            raise UserError(f"{source}: {section}: must be a mapping of key: value")
    return SearchSpace(
        name=name,
        source=source,
        description=str(raw.get("description") or ""),
        search={key: parse_distribution(spec, f"{source}: search.{key}") for key, spec in search.items()},
        fixed=flatten(raw.get("fixed") or {}),
        sweep=dict(raw.get("sweep") or {}),
    )


def parse_distribution(spec: Any, where: str) -> Distribution:
    """``{loguniform: [low, high]}``, ``{uniform: [low, high]}``, ``{int: [low, high]}``, ``{choice: [a, b, ...]}``."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(f"{where}: must be one distribution, e.g. {{loguniform: [1.0e-4, 1.0e-1]}}; "
                          f"known: {', '.join(DISTRIBUTIONS)}")
    (kind, values), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise UserError(f"{where}: unknown distribution {kind!r}; known: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list) or not values:
        example = "[a, b, c]" if kind == "choice" else "[low, high]"
        raise UserError(f"{where}: {kind} needs a list, e.g. {kind}: {example}")
    if kind == "choice":
        for option in values:
            if option is not None and not isinstance(option, (bool, int, float, str)):
                raise UserError(f"{where}: choice options must be numbers, strings, booleans or null; got {option!r}")
            if isinstance(option, float) and not math.isfinite(option):
                raise UserError(f"{where}: choice options must be finite numbers; got {option!r}")
        return Distribution(kind, tuple(values))
    numbers = int if kind == "int" else (int, float)
    if len(values) != 2 or not all(isinstance(v, numbers) and not isinstance(v, bool) for v in values):
        wanted = "two integers" if kind == "int" else "two numbers"
        raise UserError(f"{where}: {kind} needs {wanted} [low, high]; got {values}")
    low, high = values if kind == "int" else (float(values[0]), float(values[1]))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UserError(f"{where}: {kind} needs finite bounds; got {values}")
    if low > high:
        raise UserError(f"{where}: {kind} low {low} > high {high}")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{where}: loguniform needs 0 < low; got {low}")
    return Distribution(kind, (low, high))


# ---- the plan: everything decided before any work --------------------------------------------

@dataclass
class SweepPlan:
    cfg: DictConfig  # the SweepConfig every trial starts from: schema < space < preset < command line
    space: SearchSpace  # searched keys that the command line did not fix
    metrics: List[str]
    modes: List[str]
    scheduler: str  # asha | fifo
    num_samples: int
    seeds: Optional[List[int]]  # every trial runs each of these; None when the space searches `seed`
    name: str
    device: str  # what trials train on: cpu, cuda, cuda:N
    command_line: List[str] = dataclasses.field(default_factory=list)  # as the sweep was started

    @property
    def sweep_dir(self) -> str:
        return f"{self.cfg.output_dir.rstrip('/')}/{self.name}"

    def run_settings(self) -> Dict[str, Any]:
        """The run-config part every trial starts from, with the device resolved."""
        everything = resolved(self.cfg)
        settings = {f.name: everything[f.name] for f in dataclasses.fields(RunConfig)}
        settings.update(device=self.device, seeds=None)
        if self.seeds:
            settings["seed"] = self.seeds[0]
        return settings

    def trial_seeds(self, cfg: DictConfig) -> List[int]:
        """The seeds one trial runs: the sweep's, or the trial's own (sampled) seed."""
        return list(self.seeds) if self.seeds else [int(cfg.seed)]

    def record(self) -> Dict[str, Any]:
        """What ``plan.yaml`` holds: enough to continue exactly this plan (``resume_plan``)."""
        space = self.space
        return {"name": self.name, "command_line": list(self.command_line), "config": resolved(self.cfg),
                "space": {"name": space.name, "source": space.source, "description": space.description,
                          "search": {k: {d.kind: list(d.values)} for k, d in space.search.items()},
                          "fixed": space.fixed, "sweep": space.sweep},
                "metrics": self.metrics, "modes": self.modes, "scheduler": self.scheduler,
                "num_samples": self.num_samples, "seeds": self.seeds, "device": self.device}


def build_plan(args: List[str], now: Optional[datetime] = None) -> SweepPlan:
    """Parse and validate everything; raises UserError (one line) before anything is created.
    ``resume=true`` continues the plan stored in the sweep's folder (``resume_plan``)."""
    overrides = parse_overrides(args)
    if overrides.get("resume") is True:
        return resume_plan(args, overrides)
    if not overrides.get("space"):
        raise UserError(f"space: required; known spaces: {', '.join(known_spaces())} (or a path to a .yaml file)")
    space = load_space(str(overrides.space))
    run_keys = _schema_types(RunConfig)
    for section, keys in (("search", space.search), ("fixed", space.fixed)):
        for key in keys:
            if key not in run_keys:
                raise UserError(f"{space.source}: {section}.{key}: unknown key; spaces search and fix run "
                                  "settings such as train.lr or ness.threshold (python -m ness_sweep.train --help)")
    where_trials_run = {"ray": OmegaConf.to_container(overrides).get("ray", {})}  # a cluster's GPUs are not here
    for key, value in space.fixed.items():
        _checked(lambda: validate_run(merge_onto(SweepConfig, where_trials_run, _nested({key: value}))),
                 f"{space.source}: fixed.{key}")
    _checked(lambda: merge_onto(SweepSettings, space.sweep), f"{space.source}: sweep")
    layers = [_nested(space.fixed), {"sweep": space.sweep}]
    if overrides.get("preset"):
        layers.append(load_preset(str(overrides.preset)))  # a preset named on the command line beats the space
    cfg = merge_onto(SweepConfig, *layers, overrides)
    plan = _complete_plan(cfg, space, list(args))
    plan.name = _sweep_name(plan, now or datetime.now())
    check_writable(plan.cfg.output_dir, plan.name)
    return plan


def _complete_plan(cfg: DictConfig, space: SearchSpace, command_line: List[str]) -> SweepPlan:
    """Validate the merged config against the space and decide objectives, scheduler, seeds and device."""
    validate_run(cfg)
    validate_sweep(cfg)
    if joins_cluster(cfg):
        check_cluster_reachable(cfg)
    else:
        check_local_resources(cfg)
    given = flatten(OmegaConf.to_container(parse_overrides(command_line)))
    searched = {key: dist for key, dist in space.search.items() if key not in given}
    if not searched:
        raise UserError(f"space={space.name}: the command line fixes every searched key "
                          f"({', '.join(space.search)}); nothing is left to search")
    space = dataclasses.replace(space, search=searched)
    everything = resolved(cfg)
    for key, dist in searched.items():
        for value in dist.values:  # every sample lies between the bounds (or is an option): check those
            _checked(lambda: validate_run(merge_onto(SweepConfig, everything, _nested({key: value}))),
                     f"{space.source}: search.{key}: {dist.kind} value {value!r}")
    metrics, modes = _objectives(cfg, given)
    scheduler = cfg.sweep.scheduler or ("asha" if len(metrics) == 1 else "fifo")
    listed = cfg.trial.seeds or cfg.seeds
    if "seed" in searched and listed:
        raise UserError(f"{space.source}: search.seed: the space searches the seed, so trial.seeds / seeds "
                          "cannot fix it too; drop one of them")
    seeds = None if "seed" in searched else list(listed or [cfg.seed])
    plan = SweepPlan(cfg, space, metrics, modes, scheduler, cfg.sweep.num_samples or DEFAULT_NUM_SAMPLES,
                     seeds, name=str(cfg.sweep.name or ""), device=_trial_device(cfg), command_line=command_line)
    _column_types(plan)  # choice options of mixed types fail here, not at the end of the sweep
    stream_variants(plan)  # searched stream-shaping keys: finitely many streams, or refused here
    return plan


def resume_plan(args: List[str], overrides: DictConfig) -> SweepPlan:
    """The plan stored in ``OUTPUT_DIR/NAME/plan.yaml``, with only the keys in ``RESUME_MAY_CHANGE`` taken
    from this command line; any other key that differs from the stored plan is refused, naming the keys."""
    name = overrides.get("sweep", {}).get("name")
    if not name:
        raise UserError("resume=true: give sweep.name=NAME of the sweep to continue")
    output_dir = str(overrides.get("output_dir") or SweepConfig.output_dir)
    fs, root = results.filesystem_and_path(output_dir)
    if "/" in str(name) or not results.exists(fs, f"{root}/{name}"):
        raise UserError(f"resume=true: no sweep {name} in {output_dir} to resume")
    path = f"{root}/{name}/{PLAN_FILE}"
    if not results.exists(fs, path):
        raise UserError(f"resume=true: {output_dir}/{name} has no {PLAN_FILE} (started by an older ness_sweep, "
                          "or not a sweep folder): its plan is unknown, so it cannot be continued safely")
    try:
        with fs.open_input_stream(path) as stream:
            record = OmegaConf.to_container(OmegaConf.create(stream.read().decode()))
        stored = merge_onto(SweepConfig, record["config"])
        space = space_from_record(record["space"])
        stored_line = flatten(OmegaConf.to_container(parse_overrides(record["command_line"])))
    except (UserError, KeyError, TypeError, ValueError, OmegaConfBaseException) as error:
        raise UserError(f"{output_dir}/{name}/{PLAN_FILE}: unreadable plan ({_first_line(error)})") from None
    given = flatten(OmegaConf.to_container(overrides))
    stored_values = flatten(resolved(stored))
    changed, allowed = [], {}
    for key, value in given.items():
        if key in RESUME_MAY_CHANGE:
            allowed[key] = value
        elif key in ("space", "preset"):
            if str(stored_line.get(key)) != str(value):
                changed.append(key)
        elif flatten(resolved(merge_onto(SweepConfig, record["config"], _nested({key: value}))))[key] != stored_values[key]:
            changed.append(key)
    if changed:
        raise UserError(f"resume=true: {', '.join(changed)} differ from the plan the sweep started with "
                          f"({output_dir}/{name}/{PLAN_FILE}); a resume continues that plan, and may change only "
                          f"{', '.join(k for k in RESUME_MAY_CHANGE if k not in ('resume', 'sweep.name'))}")
    cfg = merge_onto(SweepConfig, record["config"], _nested(allowed),
                     {"resume": True, "output_dir": output_dir, "sweep": {"name": str(name)}})
    plan = _complete_plan(cfg, space, list(record["command_line"]))
    plan.name = str(name)
    check_writable(output_dir, plan.name)
    return plan


def space_from_record(record: Dict[str, Any]) -> SearchSpace:
    """A space as ``SweepPlan.record`` stored it (the searched keys already parsed and checked once)."""
    search = {key: parse_distribution(spec, f"{record['source']}: search.{key}") for key, spec in record["search"].items()}
    return SearchSpace(record["name"], record["source"], record["description"], search, dict(record["fixed"]),
                       dict(record["sweep"]))


def check_writable(output_dir: str, name: str) -> None:
    """The sweep folder can be made and written: checked by making (and removing) a probe in the nearest
    folder that exists, so a bad ``output_dir`` or ``sweep.name`` fails before Ray starts and leaves nothing."""
    fs, root = results.filesystem_and_path(output_dir)
    if not isinstance(fs, pafs.LocalFileSystem):
        return
    target = Path(root) / name
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"output_dir={output_dir}: {existing} is a file, not a folder")
    longest = os.pathconf(existing, "PC_NAME_MAX")
    for part in target.relative_to(existing).parts:
        if len(part.encode()) > longest:
            key = "sweep.name" if part == name else "output_dir"
            raise UserError(f"{key}: {part[:40]}... is {len(part.encode())} bytes long; names here may have "
                              f"at most {longest}")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".ness_sweep-probe-").cleanup()
    except OSError as error:
        raise UserError(f"output_dir={output_dir}: cannot create folders in {existing} "
                          f"({error.strerror or _first_line(error)})") from None


def _checked(check: Callable[[], Any], where: str) -> None:
    try:
        check()
    except UserError as error:
        raise UserError(f"{where}: {error}") from None


def _objectives(cfg: DictConfig, command_line: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """Metrics and modes; a metric named on the command line brings its natural mode unless a mode is given too."""
    metric = cfg.sweep.metric if cfg.sweep.metric is not None else "acc"
    metrics = [metric] if isinstance(metric, str) else list(metric)
    for m in metrics:
        if m not in NATURAL_MODE:
            raise UserError(f"sweep.metric={m}: must be one of {', '.join(NATURAL_MODE)} (or a list of them)")
    if len(set(metrics)) != len(metrics) or not metrics:
        raise UserError(f"sweep.metric={metrics}: list each metric once")
    mode = cfg.sweep.mode
    if mode is None or ("sweep.metric" in command_line and "sweep.mode" not in command_line):
        mode = [NATURAL_MODE[m] for m in metrics]
    modes = [mode] * len(metrics) if isinstance(mode, str) else list(mode)
    if len(modes) != len(metrics) or any(m not in ("max", "min") for m in modes):
        raise UserError(f"sweep.mode={mode}: give max or min for each of {', '.join(metrics)}")
    return metrics, modes


def _trial_device(cfg: DictConfig) -> str:
    """``device=auto`` means the GPU share a trial asks for (trial.gpu), else the CPU. Ray shows a trial only
    the GPU it was given, as ``cuda:0``: CUDA without trial.gpu, or another index, cannot work."""
    if cfg.device.startswith("cuda") and cfg.trial.gpu <= 0:
        raise UserError(f"device={cfg.device}: a trial sees a GPU only when it asks for one; set trial.gpu "
                          "(e.g. trial.gpu=0.25 for four trials per GPU) or device=auto")
    if cfg.device.startswith("cuda:") and cfg.device != "cuda:0":
        raise UserError(f"device={cfg.device}: Ray shows each trial only its own GPU, as cuda:0; "
                          "use device=cuda or device=auto")
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if cfg.trial.gpu > 0 else "cpu"


def _sweep_name(plan: SweepPlan, now: datetime) -> str:
    """sweep.name, or the space's name and the time; an existing sweep is never overwritten."""
    cfg = plan.cfg
    fs, root = results.filesystem_and_path(cfg.output_dir)
    if cfg.sweep.name:
        name = str(cfg.sweep.name)
        if "/" in name or name in (".", ".."):
            raise UserError(f"sweep.name={name}: must be a plain name, not a path")
        if results.exists(fs, f"{root}/{name}"):
            raise UserError(f"sweep.name={name}: {cfg.output_dir}/{name} exists; pick another name, "
                              "or resume=true to continue it")
        return name
    name = f"{plan.space.name}-{now:%Y%m%d-%H%M%S}"
    candidate, n = name, 1
    while results.exists(fs, f"{root}/{candidate}"):
        n += 1
        candidate = f"{name}-{n}"
    return candidate


# ---- the trial -------------------------------------------------------------------------------

def _global_rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_global_rng_state(state: tuple) -> None:
    python, numpy_state, torch_state, cuda = state
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


class SeedRun:
    """One seed's Trainer, advanced one task per ``step`` so that a trial's seeds move in lock step.

    Each seed keeps its own global RNG state between steps: interleaving seeds gives the same numbers
    as running them one after another, as ``ness_sweep.train seeds=[...]`` does.
    """

    def __init__(self, cfg: DictConfig, seed: int, stream: TaskStream):
        cfg = cfg.copy()
        cfg.seed = seed
        self.trainer = Trainer(cfg, stream, log=None)  # seeds the global generators
        self.rng = _global_rng_state()

    @property
    def finished(self) -> bool:
        return self.trainer.next_task >= self.trainer.num_tasks

    def step(self) -> None:
        """Train the next task."""
        _set_global_rng_state(self.rng)
        try:
            self.trainer.run(until=self.trainer.next_task + 1)
        finally:
            self.rng = _global_rng_state()

    def state_dict(self) -> dict:
        return {"trainer": self.trainer.state_dict(), "rng": self.rng}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.rng = state["rng"]


def trial_run_config(settings: Dict[str, Any], params: Dict[str, Any]) -> DictConfig:
    """The run config of one trial: the sweep's settings with the sampled values, validated."""
    cfg = merge_onto(RunConfig, settings, _nested(params))
    validate_run(cfg)
    return cfg


def task_history(runs: List[SeedRun]) -> List[Dict[str, Any]]:
    """Per finished task: acc_seen and the accuracy row (means over seeds), and the task's ranks (first seed's).
    Every report carries the whole history, so a run resumed elsewhere can be logged from task 1."""
    trainers = [run.trainer for run in runs]
    history = []
    for k in range(trainers[0].next_task):
        rows = [t.rows[k] for t in trainers]
        entry: Dict[str, Any] = {"task": k + 1}
        entry["acc_seen"], std = mean_std([seen_accuracy(row) for row in rows])
        if len(rows) > 1:
            entry["acc_seen_std"] = std
        entry["acc_row"] = [mean_std(list(cells))[0] for cells in zip(*rows)]
        entry["task_ranks"] = trainers[0].ranks[k]
        history.append(entry)
    return history


def task_metrics(runs: List[SeedRun]) -> Dict[str, Any]:
    """What a trial reports after a task: means over seeds (and std with several); everything at the end."""
    history = task_history(runs)
    metrics: Dict[str, Any] = {**history[-1], "history": history,
                               "seconds": sum(run.trainer.seconds for run in runs)}
    if not runs[0].finished:
        return metrics
    finals = [run.trainer.result().to_dict() for run in runs]
    for key in ("acc", "bwt", "forgetting"):
        metrics[key], std = mean_std([f[key] for f in finals])
        if len(runs) > 1:
            metrics[f"{key}_std"] = std
    matrices = [f["acc_matrix"] for f in finals]
    metrics["acc_matrix"] = [[None if cells[0] is None else sum(cells) / len(cells) for cells in zip(*rows)]
                             for rows in zip(*matrices)]
    metrics["ranks"] = finals[0]["ranks"]
    metrics["trainable_params"] = finals[0]["trainable_params"]
    return metrics


CHECKPOINT_FILE = "state.pt"


def load_checkpoint(checkpoint: Optional[tune.Checkpoint]) -> Tuple[Optional[list], Optional[str]]:
    """The states of the trial's newest readable checkpoint, and a note when an unreadable one was passed over.

    Tune hands back the last checkpoint its experiment state recorded, which can lag behind what the trial
    wrote before a crash; the newest one in the trial's folder is taken instead. Tune keeps the last two:
    a truncated or garbled newest one falls back to the one before, and with none readable the trial starts
    afresh. The note says which, for the results table.
    """
    if checkpoint is None:
        return None, None
    failures = []
    for candidate in _trial_checkpoints(checkpoint):
        label = posixpath.basename(candidate.path.rstrip("/"))
        try:
            with candidate.as_directory() as directory:
                states = torch.load(Path(directory) / CHECKPOINT_FILE, weights_only=False)
        except Exception as error:  # truncated, garbled or missing: unpickling fails in many ways
            failures.append(f"{label} unreadable ({_first_line(error)})")
            continue
        return states, ("; ".join(failures) + f"; continued from {label}") if failures else None
    return None, "; ".join(failures) + "; started afresh"


def _trial_checkpoints(checkpoint: tune.Checkpoint) -> List[tune.Checkpoint]:
    """The trial's checkpoints (``checkpoint_NNNNNN`` beside the given one, which is always among them), the
    highest number first. Numbers follow progress even after a restore from a lagging state: Tune numbers
    the next checkpoints from the one it knew, and each holds a state at least as far as the one it replaces."""
    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent = posixpath.dirname(path)
    try:
        entries = [e for e in fs.get_file_info(pafs.FileSelector(parent))
                   if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_")]
    except OSError:
        entries = []
    newest_first = sorted(entries, key=lambda e: e.base_name, reverse=True)
    paths = [e.path for e in newest_first] + ([] if any(e.path == path for e in entries) else [path])
    return [tune.Checkpoint(p, filesystem=fs) for p in paths]


def run_trial(params: Dict[str, Any], streams: Dict[str, Any], settings: Dict[str, Any],
              seeds: Optional[List[int]]) -> None:
    """One Tune trial: train through the stream of its own settings on each seed, report after every task.

    ``streams`` maps ``stream_key`` to an object-store reference of each stream the driver loaded; a trial
    whose settings ask for a stream that is not there, or get one made from other settings, fails loudly.
    Every report carries a checkpoint (weights, statistics, accuracy rows, RNG states), so a trial
    restarted after a failure, or resumed with the sweep, continues from its last finished task;
    ``started_at_task`` says where this attempt began. A trial restored after its last task (the driver
    died before Tune recorded it as done) reports its result again and trains nothing.
    A diverging loss (FloatingPointError) ends the trial with ``diverged``: a legitimate outcome of a
    search over learning rates, not a failure worth retrying.
    """
    cfg = trial_run_config(settings, params)
    torch.set_num_threads(cfg.threads)
    runs = []
    for seed in seeds or [int(cfg.seed)]:
        wanted = stream_settings(cfg, seed)
        if stream_key(wanted) not in streams:
            raise RuntimeError(f"no task stream was loaded for this trial's settings {wanted}; refusing to train")
        stream = ray.get(streams[stream_key(wanted)])
        check_stream(stream, cfg, seed)
        runs.append(SeedRun(cfg, seed, stream))
    states, recovery = load_checkpoint(tune.get_checkpoint())
    for run, state in zip(runs, states or []):
        run.load_state_dict(state)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "seeds": [run.trainer.cfg.seed for run in runs],
             "started_at_task": runs[0].trainer.next_task, "recovery": recovery}
    if runs[0].finished:
        tune.report({**task_metrics(runs), **where})
        return
    while not runs[0].finished:
        try:
            for run in runs:
                run.step()
        except FloatingPointError as error:
            tune.report({"task": runs[0].trainer.next_task, "diverged": True, "error": str(error), **where})
            return
        metrics = {**task_metrics(runs), **where}
        with tempfile.TemporaryDirectory() as directory:
            torch.save([run.state_dict() for run in runs], Path(directory) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


# ---- driver-side callbacks -------------------------------------------------------------------

def trial_status(result: Dict[str, Any], errored: bool = False) -> str:
    """How a trial ended, from its last report."""
    if errored:
        return "ERROR"
    if result.get("acc") is not None:
        return results.FINISHED
    if result.get("diverged"):
        return "DIVERGED"
    return "STOPPED"


def _error_text(trial) -> Optional[str]:
    """The trial's whole error (Ray's traceback included): the table keeps it all."""
    text = str(trial.get_error() or "").strip()
    return text or None


def _error_line(trial) -> str:
    """The error in one line for the sweep's output: its last non-empty line, the exception itself."""
    lines = [line.strip() for line in (_error_text(trial) or "").splitlines() if line.strip()]
    return lines[-1] if lines else "the trial failed without a message"


def _short_params(params: Dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class ProgressLines(tune.Callback):
    """One line per finished trial instead of Tune's status tables."""

    def __init__(self, plan: SweepPlan, num_tasks: int, out: Callable[[str], None]):
        self.plan, self.num_tasks, self.out = plan, num_tasks, out

    def _line(self, trials, trial, text: str) -> None:
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id}
        width = len(str(self.plan.num_samples))
        self.out(f"[{len(ended):>{width}}/{self.plan.num_samples}] {trial.trial_id}  {text}  "
                 f"{_short_params(trial.config)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result
        status = trial_status(result)
        if status == results.FINISHED:
            scores = "  ".join(f"{m} {result[m]:6.2f}" for m in ("acc", "bwt"))
            self._line(trials, trial, f"done     {scores}  ({result['seconds']:.1f} s)")
        elif status == "DIVERGED":
            self._line(trials, trial, f"diverged at task {result.get('task', 0) + 1}/{self.num_tasks}")
        else:
            self._line(trials, trial, f"stopped  after task {result.get('task')}/{self.num_tasks}: "
                                      f"acc_seen {result.get('acc_seen', float('nan')):.2f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, f"error    {_error_line(trial)} (the whole error: the row's error column)")


class ResultsTable(tune.Callback):
    """Rewrites ``results.parquet`` whenever a trial ends, and once more at the end of the sweep."""

    def __init__(self, plan: SweepPlan):
        self.plan = plan
        self.columns = _column_types(plan)
        self.schema = results.make_schema(self.columns, {
            "sweep": plan.name,
            "space": plan.space.source,
            "metrics": plan.metrics,
            "modes": plan.modes,
            "searched": list(plan.space.search),
            "config_columns": [name for name, _ in self.columns],
        })
        self.settings = plan.run_settings()
        self.statuses: Dict[str, str] = {}  # trial id -> how it ended, as seen here
        self.ended_before: Optional[set] = None
        self.configs: Dict[str, Dict[str, Any]] = {}  # trial id -> config columns (merging is slow-ish)

    def config_cells(self, trial) -> Dict[str, Any]:
        if trial.trial_id not in self.configs:
            cfg = trial_run_config(self.settings, trial.config)
            config = flatten(resolved(cfg))
            self.configs[trial.trial_id] = {key: config[key] for key, _ in self.columns}
            self.configs[trial.trial_id]["seeds"] = self.plan.trial_seeds(cfg)
        return self.configs[trial.trial_id]

    def note_ended_before(self, trials) -> None:
        """Trials already ended when this run first sees them: finished before a resume."""
        if self.ended_before is None:
            self.ended_before = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}

    def on_step_begin(self, iteration, trials, **info):
        self.note_ended_before(trials)

    def status(self, trial, running: bool = True) -> str:
        """How the trial ended, or PENDING / RUNNING / PAUSED while the sweep runs and UNFINISHED after
        (Tune marks trials it stops on an interrupt TERMINATED; resume=true continues them)."""
        if trial.trial_id in self.statuses:
            return self.statuses[trial.trial_id]
        if trial.trial_id in (self.ended_before or ()):
            return trial_status(trial.last_result or {}, errored=trial.status == "ERROR")
        return trial.status if running else "UNFINISHED"

    def row(self, trial, running: bool) -> Dict[str, Any]:
        result = trial.last_result or {}
        status = self.status(trial, running)
        row = {"trial_id": trial.trial_id, "status": status, "node_ip": result.get("node_ip"),
               "node_id": result.get("node_id"), **self.config_cells(trial)}
        for name, _ in results.METRIC_COLUMNS:
            if name not in row:
                row[name] = result.get(name)
        row["acc_seen_per_task"] = [entry["acc_seen"] for entry in result.get("history", [])] or None
        if status == "ERROR":
            row["error"] = _error_text(trial)
        return row

    def write(self, trials, running: bool = True) -> None:
        fs, root = results.filesystem_and_path(self.plan.cfg.output_dir)
        path = f"{root}/{self.plan.name}/{results.RESULTS_FILE}"
        results.write_table([self.row(t, running) for t in trials], self.schema, fs, path)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.statuses[trial.trial_id] = trial_status(trial.last_result)
        self.write(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.statuses[trial.trial_id] = "ERROR"
        self.write(trials)

    def on_experiment_end(self, trials, **info):
        self.note_ended_before(trials)  # a resumed sweep with nothing left to run takes no step
        self.write(trials, running=False)


class FinalMetricsOptunaSearch(OptunaSearch):
    """Optuna judges a trial by its final metrics only: per-task reports do not carry them, and a trial
    the scheduler stopped early (or that diverged) counts as pruned."""

    def _complete(self, result: Optional[Dict[str, Any]]) -> bool:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        return bool(result) and all(result.get(m) is not None for m in metrics)

    def on_trial_result(self, trial_id: str, result: Dict[str, Any]) -> None:
        if self._complete(result):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict[str, Any]] = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result if self._complete(result) else None, error)


def make_searcher(plan: SweepPlan) -> FinalMetricsOptunaSearch:
    """Optuna's TPE over the space, seeded by sweep.seed: the same command proposes the same configurations."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    multi = len(plan.metrics) > 1
    return FinalMetricsOptunaSearch(
        space={key: dist.to_optuna() for key, dist in plan.space.search.items()},
        metric=plan.metrics if multi else plan.metrics[0],
        mode=plan.modes if multi else plan.modes[0],
        seed=plan.cfg.sweep.seed)


def make_scheduler(plan: SweepPlan, num_tasks: int):
    """ASHA on the per-task ``acc_seen``; its first rung after the second task, the first the null space shapes."""
    if plan.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="task", metric="acc_seen", mode="max", max_t=num_tasks,
                         grace_period=min(2, num_tasks), reduction_factor=2)


# ---- Ray and the run -------------------------------------------------------------------------

def machine_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def connect_ray(plan: SweepPlan) -> bool:
    """Join ``ray.address`` (or RAY_ADDRESS), or start a local Ray on loopback sized to the trials.

    Returns whether this call connected (and so should disconnect); a Ray already running in this
    process (a notebook, the tests) is used as it is.
    """
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": "ERROR"}
    if joins_cluster(plan.cfg):
        address = plan.cfg.ray.address or os.environ["RAY_ADDRESS"]
        try:
            ray.init(address=address, **quiet)
        except ray.exceptions.AuthenticationError as error:  # RAY_AUTH_MODE=token but no token here
            raise UserError(f"ray.address={address}: {_first_line(error)}") from None
        except ConnectionError as error:  # nothing there, or a token-auth cluster and no (or another) token here
            raise UserError(f"ray.address={address}: {_first_line(error)}; a cluster with token authentication "
                              "needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token)") from None
        return True
    trial = plan.cfg.trial
    cpus = machine_cpus()
    if plan.cfg.sweep.max_concurrent:
        cpus = min(cpus, max(1, math.ceil(plan.cfg.sweep.max_concurrent * trial.cpu)))
    gpus = torch.cuda.device_count() if trial.gpu > 0 else 0
    # address="local": a new Ray even when `ray start` left one running on this machine
    ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, **quiet)
    return True


def check_local_resources(cfg: DictConfig) -> None:
    """A trial asking for more than this machine has would wait forever: say so before starting."""
    cpus = machine_cpus()
    if cfg.trial.cpu > cpus:
        raise UserError(f"trial.cpu={cfg.trial.cpu}: this machine has {cpus} CPUs")
    gpus = torch.cuda.device_count() if cfg.trial.gpu > 0 else 0
    if cfg.trial.gpu > gpus:
        raise UserError(f"trial.gpu={cfg.trial.gpu}: this machine has {gpus} CUDA GPUs "
                          "(or join a cluster with ray.address=auto)")


def concurrency(plan: SweepPlan) -> int:
    """Trials at once: what the Ray cluster's CPUs and GPUs hold, capped by sweep.max_concurrent.

    On a cluster sweep.max_concurrent decides alone: an autoscaler adds nodes for waiting trials, so
    what is up when the sweep starts says nothing of what it will have.
    """
    if joins_cluster(plan.cfg) and plan.cfg.sweep.max_concurrent:
        return plan.cfg.sweep.max_concurrent
    available = ray.cluster_resources()
    trial = plan.cfg.trial
    fits = math.floor(available.get("CPU", 1) / trial.cpu + 1e-9)
    if trial.gpu > 0:
        fits = min(fits, math.floor(available.get("GPU", 0) / trial.gpu + 1e-9))
    if plan.cfg.sweep.max_concurrent:
        fits = min(fits, plan.cfg.sweep.max_concurrent)
    return max(1, fits)


def stream_key(settings: Dict[str, Any]) -> str:
    """A stream's identity: its stream-shaping settings (``data.stream_settings``) as canonical JSON."""
    return json.dumps(settings, sort_keys=True)


def stream_variants(plan: SweepPlan) -> Dict[str, Tuple[DictConfig, int]]:
    """Every stream some trial may train on, keyed by ``stream_key``: a run config and seed that make it.

    Searched keys that shape the stream (``data.STREAM_KEYS``) take each of their options: choice, or
    every integer of an int range. A continuous distribution over such a key would need a new stream per
    trial, and more than ``MAX_STREAMS`` streams would crowd the object store: both are refused.
    """
    options = {}
    for key, dist in plan.space.search.items():
        if key not in STREAM_KEYS:
            continue
        if dist.kind in ("uniform", "loguniform"):
            raise UserError(f"{plan.space.source}: search.{key}: {key} shapes the task stream, which the driver "
                              f"loads once per value; search it with choice (or int), not {dist.kind}")
        options[key] = list(range(dist.values[0], dist.values[1] + 1)) if dist.kind == "int" else list(dist.values)
    count = math.prod(len(values) for values in options.values()) * len(plan.seeds or [None])
    if count > MAX_STREAMS:
        raise UserError(f"{plan.space.source}: the searched stream-shaping keys ({', '.join(options)}) give {count} "
                          f"task streams; a sweep holds at most {MAX_STREAMS}: search fewer values")
    variants = {}
    for combo in itertools.product(*options.values()):
        cfg = trial_run_config(plan.run_settings(), dict(zip(options, combo)))
        for seed in plan.trial_seeds(cfg):
            variants.setdefault(stream_key(stream_settings(cfg, seed)), (cfg, seed))
    return variants


def load_streams(plan: SweepPlan) -> Dict[str, TaskStream]:
    """Each distinct task stream of the sweep, loaded once in the driver, keyed by ``stream_key``."""
    return {key: stream_for(cfg, seed) for key, (cfg, seed) in stream_variants(plan).items()}


def check_cluster_reachable(cfg: DictConfig) -> None:
    """A ``host:port`` cluster address that nothing answers on would make Ray wait for minutes: try it first,
    for at most ``CLUSTER_CONNECT_TIMEOUT_S``. ``auto`` and ``ray://`` addresses are left to Ray."""
    address = str(cfg.ray.address or os.environ.get("RAY_ADDRESS") or "")
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CLUSTER_CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise UserError(f"ray.address={address}: no Ray cluster answers there "
                          f"({error.strerror or _first_line(error)}); start one (`ray start --head`) or fix the address") from None


@dataclass
class SweepOutcome:
    table: pa.Table
    sweep_dir: str
    seconds: float
    concurrency: int


def run_sweep(plan: SweepPlan, out: Callable[[str], None] = print) -> SweepOutcome:
    """Run the planned sweep; returns the results table as written to ``results.parquet``."""
    started = time.perf_counter()
    if plan.cfg.wandb.mode != "disabled":
        threading.Thread(target=_import_wandb, daemon=True).start()  # ~1 s, overlapping Ray's start
    streams = load_streams(plan)
    num_tasks = max(len(stream.tasks) for stream in streams.values())
    os.environ.update(TUNE_ENVIRONMENT)
    connected = connect_ray(plan)
    try:
        fs, root = results.filesystem_and_path(plan.cfg.output_dir)
        if not plan.cfg.resume:
            fs.create_dir(f"{root}/{plan.name}", recursive=True)
            write_plan(plan, fs, root)
        parallel = concurrency(plan)
        out(f"sweep {plan.name}: {plan.num_samples} trials of {plan.space.source}, {parallel} at a time, "
            f"{', '.join(f'{m} ({mode})' for m, mode in zip(plan.metrics, plan.modes))}, scheduler {plan.scheduler}, "
            f"{_benchmarks(streams)} on {plan.device}; results in {plan.sweep_dir}")
        refs = {key: ray.put(stream) for key, stream in streams.items()}
        with WandbDirectory(plan) as wandb_dir, _quiet_tune_errors():
            callbacks = [ProgressLines(plan, num_tasks, out), ResultsTable(plan)]
            if plan.cfg.wandb.mode != "disabled":
                callbacks.append(dashboards.WandbRuns(plan, wandb_dir))  # after ResultsTable: reads its table
            _tuner(plan, refs, num_tasks, parallel, callbacks, fs, root).fit()
    finally:
        if connected:
            ray.shutdown()
    table = results.read_table(plan.sweep_dir)
    return SweepOutcome(table, plan.sweep_dir, time.perf_counter() - started, parallel)


def _benchmarks(streams: Dict[str, TaskStream]) -> str:
    return ", ".join(sorted({stream.name for stream in streams.values()}))


def write_plan(plan: SweepPlan, fs: pafs.FileSystem, root: str) -> None:
    """``plan.yaml``: the resolved plan and the command line, the only thing ``resume=true`` continues."""
    text = ("# The plan this sweep started with; `resume=true sweep.name=NAME` continues exactly this plan.\n"
            + OmegaConf.to_yaml(OmegaConf.create(plan.record())))
    results.write_atomically(fs, f"{root}/{plan.name}/{PLAN_FILE}", text.encode())


@contextlib.contextmanager
def _quiet_tune_errors():
    """Tune logs a failed trial's whole traceback (about 40 lines); the sweep prints one line of its own
    and keeps the whole text in the row's ``error`` column, so Tune's own error log is muted meanwhile."""
    logger = logging.getLogger("ray.tune")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _import_wandb() -> None:
    import wandb

    wandb.setup()


def _tuner(plan: SweepPlan, streams: Dict[str, Any], num_tasks: int, parallel: int, callbacks, fs,
           root: str) -> tune.Tuner:
    trial = plan.cfg.trial
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, streams=streams, settings=plan.run_settings(), seeds=plan.seeds),
        {"cpu": trial.cpu, "gpu": trial.gpu})
    failures = tune.FailureConfig(max_failures=trial.max_failures)
    if plan.cfg.resume:
        tuner = tune.Tuner.restore(f"{root}/{plan.name}", trainable, resume_errored=True, storage_filesystem=fs)
        # Tune restores the callbacks and limits pickled when the sweep started; this run's own (a new W&B
        # folder, the settings a resume may change) replace them.
        internal = tuner._local_tuner
        if internal is not None:
            internal.get_run_config().callbacks = callbacks
            internal.get_run_config().failure_config = failures
            internal._tune_config.max_concurrent_trials = parallel
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=make_searcher(plan), scheduler=make_scheduler(plan, num_tasks),
                                    num_samples=plan.num_samples, max_concurrent_trials=parallel, reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=plan.name, storage_path=root, storage_filesystem=fs, verbose=0, callbacks=callbacks,
            failure_config=failures, checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


def _trial_dirname(trial) -> str:
    return trial.trial_id


class WandbDirectory:
    """Where W&B writes: ``<sweep dir>/wandb`` for a local output_dir; for a URI a local staging folder,
    copied to ``<sweep dir>/wandb`` at the end (W&B writes only to local disk)."""

    def __init__(self, plan: SweepPlan):
        self.plan = plan
        self.staging: Optional[tempfile.TemporaryDirectory] = None

    def __enter__(self) -> str:
        fs, root = results.filesystem_and_path(self.plan.cfg.output_dir)
        if isinstance(fs, pafs.LocalFileSystem):
            return f"{root}/{self.plan.name}"  # W&B adds the wandb/ folder itself
        self.staging = tempfile.TemporaryDirectory(prefix="ness_sweep_wandb_")
        return self.staging.name

    def __exit__(self, *exc) -> None:
        if self.staging is None:
            return
        fs, root = results.filesystem_and_path(self.plan.cfg.output_dir)
        local = Path(self.staging.name) / "wandb"
        if local.is_dir():
            pafs.copy_files(str(local), f"{root}/{self.plan.name}/wandb",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        self.staging.cleanup()


def write_best_config(outcome: SweepOutcome) -> Optional[str]:
    """``best.yaml`` beside the table: the best trial's run config (the first of a Pareto front)."""
    best = results.best_rows(outcome.table)
    if not best:
        return None
    fs, root = results.filesystem_and_path(outcome.sweep_dir)
    path = f"{root}/{results.BEST_CONFIG_FILE}"
    results.write_atomically(fs, path, results.best_config_yaml(best[0], outcome.table).encode())
    return f"{outcome.sweep_dir}/{results.BEST_CONFIG_FILE}"


# ---- helpers ---------------------------------------------------------------------------------

def _column_types(plan: SweepPlan) -> List[Tuple[str, pa.DataType]]:
    """One typed column per run-config key: the schema's type, or for free-typed keys (ness.rank: a count
    or a fraction) the type the space samples or the value has."""
    hints = _schema_types(RunConfig)
    columns = []
    for key, value in flatten(plan.run_settings()).items():
        if key in NOT_COLUMNS and key not in plan.space.search:  # a searched seed is a column of its own
            continue
        hint = hints[key]
        if hint is Any and key in plan.space.search:
            kind = _distribution_type(plan.space.search[key], f"{plan.space.source}: search.{key}")
        elif hint is Any:
            kind = _value_type(value)
        else:
            kind = _hint_type(hint)
        columns.append((key, kind))
    return columns


def _schema_types(schema: type, prefix: str = "") -> Dict[str, Any]:
    types = {}
    for name, hint in typing.get_type_hints(schema).items():
        if dataclasses.is_dataclass(hint):
            types.update(_schema_types(hint, f"{prefix}{name}."))
        else:
            types[f"{prefix}{name}"] = hint
    return types


def _hint_type(hint: Any) -> pa.DataType:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union:
        return _hint_type(args[0])
    if typing.get_origin(hint) in (list, List):
        return pa.list_(_hint_type(args[0]))
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}[hint]


def _value_type(value: Any) -> pa.DataType:
    if value is None:
        return pa.float64()
    return _hint_type(type(value))


def _distribution_type(dist: Distribution, where: str) -> pa.DataType:
    if dist.kind in ("loguniform", "uniform"):
        return pa.float64()
    if dist.kind == "int":
        return pa.int64()
    kinds = {_value_type(v) for v in dist.values if v is not None}
    if len(kinds) > 1:
        raise UserError(f"{where}: choice options must share one type here (an int rank is a count, "
                          f"a float a fraction); got {list(dist.values)}")
    return kinds.pop() if kinds else pa.float64()


def _nested(dotted: Dict[str, Any]) -> Dict[str, Any]:
    tree: Dict[str, Any] = {}
    for key, value in dotted.items():
        node = tree
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise UserError(f"{key}: {parent} is a value, not a group of keys")
        node[leaf] = value
    return tree


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

