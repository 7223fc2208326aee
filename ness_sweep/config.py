"""Typed settings: one schema, command-line ``key=value`` overrides, validation before any work.

Every default lives here ("one fact in one place"). ``load_run_config`` and
``load_sweep_config`` are the only ways in, both through ``layered``; both reject unknown keys and bad
values with a ``UserError`` whose message is one line naming the key and what would be valid.
"""

from __future__ import annotations

import copyreg
import dataclasses
import functools
import json
import math
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRESET_DIR = Path(__file__).parent / "presets"

NORMS = ("frobenius", "nuclear")
MEMORIES = ("replay", "stream")
OPTIMIZERS = ("sgd", "adam")
TASK_ORDERS = ("fixed", "seeded")
MAX_SEED = 2**32 - 1  # numpy's generators take seeds in [0, 2**32 - 1]
SEED_RANGE = f"must be in [0, {MAX_SEED}] (numpy's seed range)"
MAX_THREADS = 1024  # above any node's core count; torch overflows past 2**31 - 1 and starts every thread it is given


class UserError(ValueError):
    """A problem the user can fix, reported as one line and exit code 2, never a traceback: a bad key or
    value, a missing or corrupt file, an unreachable cluster. The message names what is at fault and what
    would be valid."""


def setting(default: Any = None, help: str = "", factory: Any = None) -> Any:
    """A schema field with its meaning, which ``--help`` prints beside the default."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def settings_group(name: str, fields: Dict[str, Tuple[type, Any]]) -> type:
    """A settings group as a dataclass built from ``{key: (type, setting(...))}``: unlike a ``class`` body, a
    key may be a Python keyword (``ewc.lambda``). Such a class is a schema only: OmegaConf reads its fields."""
    namespace = {"__annotations__": {key: kind for key, (kind, _) in fields.items()}}
    namespace.update({key: value for key, (_, value) in fields.items()})
    return dataclass(type(name, (), namespace), init=False, repr=False, eq=False)


@dataclass
class TrainSettings:
    epochs: int = setting(20, "epochs per task at most (the paper's protocol may stop earlier, see lr_min)")
    lr: float = setting(0.05, "learning rate")
    batch_size: int = setting(64, "training batch size")
    eval_batch_size: int = setting(64, "batch size of evaluation and of the layer-input statistics: models with "
                                       "batch statistics (alexnet, resnet18) depend on it; the paper: 64")
    optimizer: str = setting("sgd", f"one of {', '.join(OPTIMIZERS)}")
    momentum: float = setting(0.9, "SGD momentum, in [0, 1)")
    weight_decay: float = setting(0.0, "L2 weight decay")
    lr_patience: int = setting(5, "epochs without a better validation loss before lr is divided by lr_factor")
    lr_factor: float = setting(3.0, "what lr is divided by when validation stalls")
    lr_min: float = setting(1e-4, "a task ends when lr falls below this")
    valid_fraction: float = setting(0.1, "share of each task's training data held out for validation")


@dataclass
class NessSettings:
    threshold: Optional[float] = setting(1e-2, "keep directions with singular value <= threshold * norm of the "
                                               "layer's inputs; null: rank alone decides")
    norm: str = setting("frobenius", "the norm threshold scales: frobenius (the paper) or nuclear (the "
                                     "authors' code)")
    rank: Any = setting(None, "the r smallest directions: an integer count, a fraction of the layer's input "
                              "width, or null; with threshold too, the smaller set")
    memory: str = setting("replay", "replay: rebuild statistics from all previous tasks' inputs (the paper); "
                                    "stream: add each task's Gram matrix once, keep no inputs")


@dataclass
class GpmSettings:
    threshold: Any = setting(None, "energy threshold in (0, 1): one number, or a list with one per adapted layer; "
                                   "null: the paper's value (split_cifar100 0.97 + 0.003 t, five_datasets 0.965), "
                                   "else chosen on validation data (permuted_digits 0.99, others 0.97)")
    samples: int = setting(300, "training samples per task whose layer inputs form the representation (the "
                                "paper's code: 300 on permuted MNIST, 125 on CIFAR-100)")


@dataclass
class SgpSettings(GpmSettings):
    scale: float = setting(10.0, "alpha of the importance (alpha+1) s / (alpha s + s_max) of each basis vector")


EwcSettings = settings_group("EwcSettings", {
    "lambda": (float, setting(100.0, "weight of the penalty (lambda/2) sum F (theta - theta*)^2")),
    "gamma": (float, setting(1.0, "online EWC: F <- gamma F + F_new after each task, in [0, 1]")),
})

LwfSettings = settings_group("LwfSettings", {
    "lambda": (float, setting(0.3, "weight of the distillation loss on the old heads (summed over them)")),
    "temperature": (float, setting(2.0, "softmax temperature of the distillation")),
})


@dataclass
class RunConfig:
    """Everything one training run needs (``python -m ness_sweep.train``)."""

    benchmark: str = setting("permuted_digits", "a registered task stream (listed below) or an import path "
                                                "module:function")
    data_root: str = setting("~/.cache/ness_sweep", "where data files are read from (and downloaded to)")
    download: bool = setting(True, "fetch missing CIFAR / MNIST / Fashion-MNIST / SVHN files through torchvision")
    model: str = setting("auto", "auto (the benchmark's default), a registered model (listed below), or an "
                                 "import path module:function")
    method: str = setting("ness", "finetune, ness, gpm, sgp, ewc, lwf, or an import path module:Class to your "
                                  "own method; each reads only its own settings group (below)")
    seed: int = setting(0, "seeds splits, permutations, task order and initialisation")
    seeds: Optional[List[int]] = setting(None, "several seeds run in turn, reported as mean ± std")
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    # Part of what a run's numbers depend on: the count decides how float sums are split, so it changes their
    # last digits (and training amplifies them); torch's default (every core) also makes CPU runs slow on a busy
    # machine. ``ness_sweep.train`` applies it, so a preset holding it reruns exactly.
    threads: int = setting(1, "torch CPU threads; part of what a run's numbers depend on")
    preset: Optional[str] = setting(None, "a shipped preset (paper_cifar100, ...) or a YAML file of settings")
    task_order: str = setting("fixed", "fixed: the benchmark's order; seeded: shuffled by the seed")
    output: Optional[str] = setting(None, "write the result as JSON to this file")
    train: TrainSettings = setting(help="optimisation", factory=TrainSettings)


@dataclass
class SweepSettings:
    name: Optional[str] = setting(None, "the sweep's folder name under output_dir (default: space and time)")
    num_samples: Optional[int] = setting(None, "trials to run (default: the space's, else 10)")
    metric: Any = setting(None, "what Optuna and ASHA select on: valid_acc, valid_bwt or valid_forgetting (on "
                                "held-out training data), or a list of them for a Pareto front (default valid_acc)")
    select_on_test: bool = setting(False, "allow selecting on the test metrics acc, bwt, forgetting (optimistic: "
                                          "every view of the results then says 'selected on test')")
    mode: Any = setting(None, "max or min per metric (default: each metric's natural one)")
    scheduler: Optional[str] = setting(None, "asha (stops weak trials after tasks) or fifo (default: asha for "
                                             "one metric, unless the space searches method)")
    max_concurrent: Optional[int] = setting(None, "trials at once at most (default: what the resources hold)")
    seed: int = setting(0, "seeds Optuna: the same command proposes the same configurations")
    confirm_top: int = setting(3, "when the search ends, rerun its best configurations (per method, when it "
                                  "searches method) on fresh seeds; 0: no confirmation")
    confirm_seeds: int = setting(3, "fresh seeds each confirmed configuration runs, disjoint from the search's")
    progress_s: float = setting(30.0, "seconds between progress lines of running trials and the status line "
                                      "(0: none)")


@dataclass
class TrialSettings:
    cpu: float = setting(1.0, "CPUs Ray reserves per trial (fractions pack several trials per CPU)")
    gpu: float = setting(0.0, "GPUs per trial (0.25: four trials per GPU)")
    seeds: Optional[List[int]] = setting(None, "every trial runs each seed; rows hold mean ± std")
    max_failures: int = setting(2, "restarts of a crashed trial, each from its last finished task")
    keep_checkpoints: bool = setting(False, "keep a finished trial's last two checkpoints (weights, statistics; "
                                            "~1 MB a trial) instead of removing them when it ends")


@dataclass
class RaySettings:
    address: Optional[str] = setting(None, "null: a local Ray on 127.0.0.1; auto or HOST:PORT joins a cluster")


@dataclass
class WandbSettings:
    mode: str = setting("offline", "offline (upload later with wandb sync), online, or disabled")
    project: str = setting("ness_sweep", "W&B project")
    entity: Optional[str] = setting(None, "W&B entity (team or user)")
    group: Optional[str] = setting(None, "W&B group (default: the sweep's name)")


@dataclass
class SweepConfig(RunConfig):
    """A sweep: the run settings every trial starts from, plus how to search and where to run."""

    space: Optional[str] = setting(None, "the search space: a shipped name or a path to a YAML file")
    sweep: SweepSettings = setting(help="the search", factory=SweepSettings)
    trial: TrialSettings = setting(help="each trial's resources and seeds", factory=TrialSettings)
    ray: RaySettings = setting(help="where trials run", factory=RaySettings)
    output_dir: str = setting("ness_sweep_results", "where sweep folders go: a path or a URI (s3://...)")
    resume: bool = setting(False, "with sweep.name: continue an interrupted sweep with its stored plan")
    dry_run: bool = setting(False, "print the resolved plan and exit, creating nothing")
    wandb: WandbSettings = setting(help="Weights & Biases", factory=WandbSettings)


def parse_overrides(args: List[str]) -> DictConfig:
    """``key=value`` strings to a nested config; values parse as YAML (``seeds=[1,2]``, ``rank=null``); a key
    given twice takes the last value, as on a command line that appends an override to a rerun line."""
    for arg in args:
        if not isinstance(arg, str):
            raise UserError(f"argument {arg!r} is of type {type(arg).__name__}, not a key=value string; give "
                            "settings as strings such as 'train.lr=0.1' or as keyword arguments (train={'lr': 0.1})")
        if "=" not in arg or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", arg.partition("=")[0]):
            raise UserError(f"argument {arg!r}: expected key=value with a dotted key such as train.lr "
                              "(see --help for the keys)")
    try:
        return OmegaConf.from_dotlist(list(args))
    except Exception as error:  # OmegaConf's errors and YAML's syntax errors, which come in many types
        raise UserError(f"could not parse arguments: {first_line(error)}") from None


def merge_onto(schema: Any, *layers: Any) -> DictConfig:
    """Merge plain layers onto a typed schema; unknown keys and wrong types become ``UserError``."""
    merged = OmegaConf.structured(schema)
    OmegaConf.set_struct(merged, True)
    for layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except (OmegaConfBaseException, TypeError) as error:  # TypeError: a mapping where a list belongs
            raise UserError(_describe(error, merged, layer)) from None
    return merged


def preset_path(name: str) -> Path:
    """A paper preset by name (``ness_sweep/presets/<name>.yaml``) or a path to a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise UserError(f"preset={name}: no such preset; known presets: {known} (or a path to a .yaml file)")
    return path


def load_preset(path: Path) -> DictConfig:
    """A preset file's settings, a mapping; its keys and types are checked by ``layered`` once the run's method
    is known (a preset may hold several methods' groups), ranges with the whole config, since the command line
    may complete a preset (threshold null, rank given)."""
    try:
        preset = OmegaConf.load(path)
    except Exception as error:  # YAML syntax errors come in many types
        raise UserError(f"preset file {path}: not valid YAML: {first_line(error)}") from None
    if not isinstance(preset, DictConfig) or not preset:
        raise UserError(f"preset file {path}: {'not a mapping' if preset else 'empty'}; a preset maps run "
                          "settings to values (benchmark: split_digits, train: {lr: 0.01}, ...)")
    if preset.get("preset") is not None:
        raise UserError(f"preset file {path}: preset: a preset cannot name another preset")
    return preset


# What a config's methods read: given the method names a config may run, the settings groups they read
# ({"gpm": GpmSettings}) and every other known group with the method it belongs to ({"ness": "ness", ...}).
MethodGroups = Callable[[Sequence[str]], Tuple[Dict[str, type], Dict[str, str]]]


def load_run_config(args: List[str], groups: MethodGroups) -> DictConfig:
    """One training run's settings from the command line (``layered``), validated."""
    cfg = layered(RunConfig, parse_overrides(args), groups=groups)
    validate_run(cfg)
    return cfg


def load_sweep_config(args: List[str], groups: MethodGroups, base: Optional[List[Any]] = None,
                      searched_methods: Sequence[str] = ()) -> DictConfig:
    """A sweep's settings from the command line over ``base`` (its space's fixed values and sweep defaults);
    ``searched_methods``: the options of a searched ``method``, whose groups the sweep holds instead."""
    overrides = parse_overrides(args)
    given = OmegaConf.to_container(overrides)
    for key in sorted(set(RUN_ONLY_KEYS) & set(given)):
        raise UserError(f"{key}={argument_value(given[key])}: {run_only(key)}")
    cfg = layered(SweepConfig, overrides, groups, base, searched_methods)
    validate_run(cfg)
    validate_sweep(cfg)
    return cfg


# Keys of one run (``python -m ness_sweep.train``) that a sweep has no use for, with what a sweep takes instead.
RUN_ONLY_KEYS = {"output": "a sweep writes its results under output_dir=DIR",
                 "seeds": "a sweep's trials each run every seed of trial.seeds=[...]"}


def run_only(key: str) -> str:
    """Why a sweep refuses one of ``RUN_ONLY_KEYS``, and what to give instead."""
    return f"a setting of one run (python -m ness_sweep.train), not of a sweep; {RUN_ONLY_KEYS[key]}"


def _require(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise UserError(f"{key}={value}: {valid}")


def validate_run(cfg: DictConfig) -> None:
    """Range and choice checks the types cannot express (of a run config, or the run part of a sweep's)."""
    _require_finite(cfg)
    _require(cfg.task_order in TASK_ORDERS, "task_order", cfg.task_order, f"must be one of {', '.join(TASK_ORDERS)}")
    _require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device) is not None, "device", cfg.device,
             "must be auto, cpu, cuda or cuda:N")
    if not joins_cluster(cfg):
        require_device(cfg.device)
    _require(1 <= cfg.threads <= MAX_THREADS, "threads", cfg.threads, f"must be in [1, {MAX_THREADS}]")
    _require(0 <= cfg.seed <= MAX_SEED, "seed", cfg.seed, SEED_RANGE)
    _require_seeds("seeds", cfg.seeds)
    t = cfg.train
    _require(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
    _require(t.lr > 0, "train.lr", t.lr, "must be > 0")
    _require(t.batch_size >= 2, "train.batch_size", t.batch_size,
             "must be >= 2 (the trainer skips a batch of one sample: batch norm cannot normalise it)")
    _require(t.eval_batch_size >= 2, "train.eval_batch_size", t.eval_batch_size,
             "must be >= 2 (batch norm with batch statistics needs two samples)")
    _require(t.optimizer in OPTIMIZERS, "train.optimizer", t.optimizer, f"must be one of {', '.join(OPTIMIZERS)}")
    _require(0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)")
    _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _require(t.lr_patience >= 1, "train.lr_patience", t.lr_patience, "must be >= 1")
    _require(t.lr_factor > 1, "train.lr_factor", t.lr_factor, "must be > 1")
    _require(t.lr_min >= 0, "train.lr_min", t.lr_min, "must be >= 0")
    _require(0 < t.valid_fraction < 1, "train.valid_fraction", t.valid_fraction, "must be in (0, 1)")
    validate_groups(cfg)


def validate_groups(cfg: DictConfig) -> None:
    """Range checks of the shipped methods' settings groups that ``cfg`` holds (only its methods' groups)."""
    if "ness" in cfg:
        n = cfg.ness
        _require(n.threshold is None or n.threshold > 0, "ness.threshold", n.threshold,
                 "must be > 0, or null to use ness.rank alone")
        _require(n.norm in NORMS, "ness.norm", n.norm, f"must be one of {', '.join(NORMS)}")
        _require(n.memory in MEMORIES, "ness.memory", n.memory, f"must be one of {', '.join(MEMORIES)}")
        rank = n.rank
        if rank is not None:
            _require(isinstance(rank, (int, float)) and not isinstance(rank, bool), "ness.rank", rank,
                     "must be an integer count, a fraction in (0, 1], or null")
            _require(rank >= 0, "ness.rank", rank, "must be >= 0 (an integer count or a fraction of the layer width)")
            if isinstance(rank, float):
                _require(rank <= 1, "ness.rank", rank,
                         "a float rank is a fraction of the layer width: must be in [0, 1]")
        _require(n.threshold is not None or rank is not None, "ness.threshold", None,
                 "threshold and rank cannot both be null: set at least one")
    for group in ("gpm", "sgp"):
        if group in cfg:
            g = cfg[group]
            threshold = g.threshold
            valid = "must be a number in (0, 1), a list of them (one per layer), or null (the paper's value)"
            numbers = threshold if isinstance(threshold, (list, tuple)) or OmegaConf.is_list(threshold) else [threshold]
            if threshold is not None:
                _require(len(numbers) > 0 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1
                                                  for x in numbers), f"{group}.threshold", threshold, valid)
            _require(g.samples >= 1, f"{group}.samples", g.samples, "must be >= 1")
            if group == "sgp":
                _require(g.scale > 0, "sgp.scale", g.scale, "must be > 0")
    if "ewc" in cfg:
        _require(cfg.ewc["lambda"] >= 0, "ewc.lambda", cfg.ewc["lambda"], "must be >= 0")
        _require(0 <= cfg.ewc.gamma <= 1, "ewc.gamma", cfg.ewc.gamma, "must be in [0, 1]")
    if "lwf" in cfg:
        _require(cfg.lwf["lambda"] >= 0, "lwf.lambda", cfg.lwf["lambda"], "must be >= 0")
        _require(cfg.lwf.temperature > 0, "lwf.temperature", cfg.lwf.temperature, "must be > 0")


def _require_finite(cfg: DictConfig) -> None:
    """inf and nan are valid floats to the schema but no valid setting: ``ness.threshold=inf`` would select
    every direction and train as plain fine-tuning, ``train.lr=inf`` would fail deep inside training."""
    for key, value in flatten(resolved(cfg)).items():
        for number in value if isinstance(value, list) else [value]:
            _require(not isinstance(number, float) or math.isfinite(number), key, number, "must be a finite number")


def _require_seeds(key: str, seeds: Optional[List[int]]) -> None:
    """A list of seeds, if given: not empty, each in numpy's range."""
    if seeds is not None:
        _require(len(seeds) > 0, key, list(seeds), "must list at least one seed")
        _require(all(0 <= seed <= MAX_SEED for seed in seeds), key, list(seeds), f"each {SEED_RANGE}")


def joins_cluster(cfg: DictConfig) -> bool:
    """A sweep config that runs its trials on a Ray cluster (``ray.address`` or RAY_ADDRESS)."""
    return "ray" in cfg and bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))


def require_device(device: str) -> None:
    """An explicit CUDA device must exist on this machine; torch would fail deep inside the first run.

    ``auto`` and ``cpu`` always work. A sweep joining a cluster skips this: its trials' GPUs are elsewhere.
    """
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        return
    import torch  # here, not at the top: reading a config needs no torch unless it asks for CUDA

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(match.group(1) or 0) >= count:
        available = f"{count} CUDA GPU(s), cuda:0 to cuda:{count - 1}" if count else "no CUDA GPU"
        raise UserError(f"device={device}: this machine has {available}; use device=cpu or device=auto")


def validate_sweep(cfg: DictConfig) -> None:
    tr = cfg.trial
    _require(tr.cpu > 0, "trial.cpu", tr.cpu, "must be > 0")
    _require(tr.gpu >= 0, "trial.gpu", tr.gpu, "must be >= 0 (fractions like 0.25 pack several trials per GPU)")
    _require(tr.max_failures >= 0, "trial.max_failures", tr.max_failures, "must be >= 0")
    _require_seeds("trial.seeds", tr.seeds)
    _require(0 <= cfg.sweep.seed <= MAX_SEED, "sweep.seed", cfg.sweep.seed, SEED_RANGE)
    _require(cfg.wandb.mode in ("offline", "online", "disabled"), "wandb.mode", cfg.wandb.mode,
             "must be offline, online or disabled")
    s = cfg.sweep
    _require(s.progress_s >= 0, "sweep.progress_s", s.progress_s, "must be >= 0 (0 turns the progress lines off)")
    if s.num_samples is not None:
        _require(s.num_samples >= 1, "sweep.num_samples", s.num_samples, "must be >= 1")
    if s.max_concurrent is not None:
        _require(s.max_concurrent >= 1, "sweep.max_concurrent", s.max_concurrent, "must be >= 1")
    _require(s.confirm_top >= 0, "sweep.confirm_top", s.confirm_top, "must be >= 0 (0: no confirmation)")
    _require(s.confirm_seeds >= 1, "sweep.confirm_seeds", s.confirm_seeds, "must be >= 1")
    if s.scheduler is not None:
        _require(s.scheduler in ("asha", "fifo"), "sweep.scheduler", s.scheduler, "must be asha or fifo")


def resolved(cfg: DictConfig) -> dict:
    """A plain dict of the config (for JSON, Ray and W&B)."""
    return OmegaConf.to_container(cfg, resolve=True)


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested dict as dotted keys: {"train": {"lr": 1}} → {"train.lr": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(dotted: dict) -> dict:
    """Dotted keys as a nested dict: {"train.lr": 1} → {"train": {"lr": 1}} (``flatten``'s inverse)."""
    tree: dict = {}
    for key, value in dotted.items():
        node = tree
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise UserError(f"{key}: {parent} is a value, not a group of keys")
        node[leaf] = value
    return tree


def argument_value(value: Any) -> str:
    """A value as ``key=value`` writes it so that the command line parses it back to the same value and type
    (floats keep every digit; a string that YAML would read as something else, ``"0.5"`` or ``"null"``, quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(float(value))  # numpy's floats print as np.float64(...)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(argument_value(v) for v in value) + "]"
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and not _reads_back(value):
        return json.dumps(value, ensure_ascii=False)  # a YAML double-quoted string
    return str(value)


@functools.lru_cache(maxsize=1024)  # a table's rows repeat their strings (benchmark, method, ...); a parse is slow
def _reads_back(text: str) -> bool:
    """``key=text`` parses back to the string ``text`` itself."""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"] == text
    except Exception:  # not valid YAML ("[1, 2"): OmegaConf's errors and YAML's, which come in many types
        return False


def arguments(settings: dict, given: Sequence[str] = ()) -> List[str]:
    """Keyword settings (nested dicts or dotted keys) of the Python API as the command line's ``key=value``
    strings, to follow the ``key=value`` strings ``given`` beside them. A key that two keywords set
    (``train={"lr": 0.1}`` and ``**{"train.lr": 0.2}``), or a keyword and a string, to different values is
    refused: a call has no order of overrides to say which one wins."""
    written = [f"{key}={argument_value(value)}" for name, tree in settings.items()
               for key, value in flatten({name: tree}).items()]
    seen = flatten(OmegaConf.to_container(parse_overrides(list(given))))
    for argument in written:
        for key, value in flatten(OmegaConf.to_container(parse_overrides([argument]))).items():
            if key in seen and seen[key] != value:
                raise UserError(f"{key}: given twice, as {argument_value(seen[key])} and {argument_value(value)}; "
                                "give each key once")
            seen[key] = value
    return written


def layered(schema: type, overrides: DictConfig, groups: MethodGroups, base: Optional[List[Any]] = None,
            searched_methods: Sequence[str] = ()) -> DictConfig:
    """The one way settings are layered: the schema's defaults < ``base`` (a sweep space's fixed values and
    sweep defaults) < the preset named in ``overrides`` < ``overrides`` (the command line).

    The config holds the settings groups of its method (of a sweep searching ``method``: of every option,
    ``searched_methods``) only: a key of another method's group is refused in ``base`` and ``overrides``, and
    dropped from a preset (which may hold several methods' groups, each run reading its own)."""
    layers = list(base or [])
    preset = preset_layer(overrides)
    methods = list(searched_methods) or [method_of([*layers, preset, overrides])]
    own, others = groups(methods)
    for layer in [*layers, overrides]:
        for group in set(others) & set(layer):
            value = layer[group]
            key = next(iter(flatten({group: OmegaConf.to_container(value) if OmegaConf.is_config(value) else value})),
                       group)
            raise UserError(f"{key}: a setting of method={others[group]}, and this run's method is "
                            f"{' or '.join(methods)}; drop it, or set method={others[group]}")
    schema = with_groups(schema, own)
    if preset is not None:
        preset = OmegaConf.masked_copy(preset, [key for key in preset if key not in others])
        try:
            merge_onto(with_groups(RunConfig, own), preset)
        except UserError as error:
            raise UserError(f"preset file {preset_path(str(overrides.preset))}: {error}") from None
        layers.append(preset)
    return merge_onto(schema, *layers, overrides)


def method_of(layers: Sequence[Any]) -> str:
    """The method the last layer that names one sets (layers in ``layered``'s order; None skipped), or the
    schema's default."""
    return next((str(layer["method"]) for layer in reversed(layers)
                 if layer is not None and layer.get("method") is not None), RunConfig.method)


def preset_layer(overrides: DictConfig) -> Optional[DictConfig]:
    """The preset the command line names, as read (None without one)."""
    return load_preset(preset_path(str(overrides.preset))) if overrides.get("preset") else None


# A schema with groups is a dataclass made at run time, so cloudpickle (Ray's, when Tune stores the callbacks
# that hold a sweep's config) pickles it by value, and each field's ``dataclasses.MISSING`` with it: rebuilt as a
# fresh object that no longer *is* MISSING, it turns every field default into an invalid value, in this process
# too (cloudpickle rebuilds a known class in place). Pickled by name, the sentinel stays the one object.
copyreg.pickle(type(dataclasses.MISSING), lambda sentinel: "MISSING")


def with_groups(schema: type, groups: Dict[str, type]) -> type:
    """``schema`` with methods' settings groups as fields (``gpm`` → GpmSettings)."""
    return _with_groups(schema, tuple(sorted(groups.items())))


@functools.lru_cache(maxsize=None)
def _with_groups(schema: type, groups: Tuple[Tuple[str, type], ...]) -> type:
    if not groups:
        return schema
    fields = [(name, kind, setting(help=f"method {name}'s settings", factory=kind)) for name, kind in groups]
    return dataclasses.make_dataclass(schema.__name__, fields, bases=(schema,))


def schema_types(schema: type) -> dict:
    """Every leaf key of a schema (dotted) with its type hint."""
    return {key: hint for key, (_, _, hint) in schema_fields(schema).items()}


def first_line(error: BaseException, with_type: bool = False) -> str:
    """An exception's message in one line (its first), after its type's name with ``with_type``; its type's name
    alone when it has no message."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0]}" if with_type else text.splitlines()[0]


def help_text(schema: type = RunConfig, prefix: str = "") -> str:
    """Every key with its default and what it means, from the schema's field metadata."""
    lines = []
    for key, (f, default, _) in schema_fields(schema, prefix).items():
        shown = OmegaConf.to_yaml({"v": default}).strip()[3:]
        lines.append(f"  {key}={shown}".ljust(38) + f"  {f.metadata.get('help', '')}")
    return "\n".join(lines)


def schema_fields(schema: type, prefix: str = "") -> dict:
    """Every leaf key of a schema (dotted) with its field, default and type hint: the one walk over it."""
    found = {}
    hints, instance = typing.get_type_hints(schema), schema()
    for f in dataclasses.fields(schema):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            found.update(schema_fields(type(value), f"{prefix}{f.name}."))
        else:
            found[f"{prefix}{f.name}"] = (f, value, hints[f.name])
    return found


def _describe(error: Exception, merged: DictConfig, layer: Any) -> str:
    """One line naming the key a merge failed on; OmegaConf leaves it out when a whole group or list is at fault."""
    key = getattr(error, "full_key", None) or _failing_key(merged, layer)
    message = first_line(error)
    if "Key '" in message and "not in" in message or "ConfigKeyError" in type(error).__name__:
        given = OmegaConf.select(OmegaConf.create(layer), key) if isinstance(layer, Mapping) else None
        if OmegaConf.is_dict(given) and given:  # an unknown group (a typo, another method's): name its first key
            key = f"{key}.{next(iter(flatten(OmegaConf.to_container(given))))}"
        return f"{key}: unknown key (see --help for the valid keys)"
    kind = _schema_kind(merged, key)
    if kind is dict:
        return f"{key}: a group of settings, not a value; set its keys one by one, e.g. {key}.NAME=VALUE (see --help)"
    if kind is list:
        return f"{key}: must be a list, e.g. {key}=[0,1,2]"
    return f"{key}: {message}"


def _failing_key(merged: DictConfig, layer: Any, prefix: str = "") -> str:
    """The dotted key of ``layer`` whose merge fails on its own (the deepest one)."""
    for key in layer:
        value = layer[key]
        try:
            OmegaConf.merge(merged, {key: value})
        except (OmegaConfBaseException, TypeError):
            if isinstance(value, Mapping) and OmegaConf.is_dict(merged.get(key)):
                return _failing_key(merged[key], value, f"{prefix}{key}.")
            return f"{prefix}{key}"
    return prefix.rstrip(".") or "?"


def _schema_kind(merged: DictConfig, key: str) -> Optional[type]:
    """What the schema holds at a dotted key: dict (a group of settings), list, or None (one value, or no such key).

    Read from the schema's type hints, as OmegaConf types its nodes: an unset ``Optional[List]`` is a list all the
    same, and no merged value is read, so that describing an error cannot resolve an interpolation or raise.
    """
    types = schema_types(OmegaConf.get_type(merged))
    if any(name.startswith(f"{key}.") for name in types):
        return dict
    hint = types.get(key)
    for kind in (hint, *typing.get_args(hint)):  # Optional[X] is Union[X, None]
        origin = typing.get_origin(kind) or kind
        if origin in (list, tuple):
            return list
        if origin is dict or dataclasses.is_dataclass(origin):
            return dict
    return None
