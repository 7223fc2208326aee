"""Typed settings: one schema, command-line ``key=value`` overrides, validation before any work.

Every default lives here (DESIGN.md, "one fact in one place"). ``load_run_config`` and
``load_sweep_config`` are the only ways in; both reject unknown keys and bad values with a
``UserError`` whose message is one line naming the key and what would be valid.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRESET_DIR = Path(__file__).parent / "presets"

BENCHMARKS = ("permuted_digits", "split_digits", "split_cifar100", "five_datasets", "split_miniimagenet",
              "permuted_mnist1d", "split_mnist1d")
MODELS = ("auto", "mlp", "alexnet", "resnet18", "cnn1d")
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


@dataclass
class TrainSettings:
    epochs: int = 20
    lr: float = 0.05
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_patience: int = 5
    lr_factor: float = 3.0
    lr_min: float = 1e-4
    valid_fraction: float = 0.1


@dataclass
class NessSettings:
    threshold: Optional[float] = 1e-2
    norm: str = "frobenius"
    # int: a count of directions; float: a fraction of the layer's input width; null: no rank rule.
    rank: Any = None
    memory: str = "replay"


@dataclass
class RunConfig:
    """Everything one training run needs (``python -m ness_sweep.train``)."""

    benchmark: str = "permuted_digits"
    data_root: str = "~/.cache/ness_sweep"
    download: bool = True  # fetch missing CIFAR / MNIST / Fashion-MNIST / SVHN files through torchvision
    model: str = "auto"
    method: str = "ness"
    seed: int = 0
    seeds: Optional[List[int]] = None
    device: str = "auto"
    # torch's CPU threads. Part of what a run's numbers depend on: the count decides how float sums are split,
    # so it changes their last digits (and training amplifies them); torch's default (every core) also makes CPU
    # runs slow on a busy machine. ``ness_sweep.train`` applies it, so a preset holding it reruns exactly.
    threads: int = 1
    preset: Optional[str] = None
    task_order: str = "fixed"
    output: Optional[str] = None
    train: TrainSettings = field(default_factory=TrainSettings)
    ness: NessSettings = field(default_factory=NessSettings)


@dataclass
class SweepSettings:
    name: Optional[str] = None
    num_samples: Optional[int] = None
    metric: Any = None
    mode: Any = None
    scheduler: Optional[str] = None
    max_concurrent: Optional[int] = None
    seed: int = 0


@dataclass
class TrialSettings:
    cpu: float = 1.0
    gpu: float = 0.0
    seeds: Optional[List[int]] = None
    max_failures: int = 2


@dataclass
class RaySettings:
    address: Optional[str] = None


@dataclass
class WandbSettings:
    mode: str = "offline"
    project: str = "ness_sweep"
    entity: Optional[str] = None
    group: Optional[str] = None


@dataclass
class SweepConfig(RunConfig):
    """A sweep: the run settings every trial starts from, plus how to search and where to run."""

    space: Optional[str] = None
    sweep: SweepSettings = field(default_factory=SweepSettings)
    trial: TrialSettings = field(default_factory=TrialSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    output_dir: str = "ness_sweep_results"
    resume: bool = False
    wandb: WandbSettings = field(default_factory=WandbSettings)


def parse_overrides(args: List[str]) -> DictConfig:
    """``key=value`` strings to a nested config; values parse as YAML (``seeds=[1,2]``, ``rank=null``)."""
    for arg in args:
        if "=" not in arg or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", arg.partition("=")[0]):
            raise UserError(f"argument {arg!r}: expected key=value with a dotted key such as train.lr "
                              "(see --help for the keys)")
    try:
        return OmegaConf.from_dotlist(list(args))
    except OmegaConfBaseException as error:
        raise UserError(f"could not parse arguments: {_one_line(error)}") from None


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


def load_preset(name: str) -> DictConfig:
    """A paper preset by name (``ness_sweep/presets/<name>.yaml``) or a path to a YAML file.

    Its keys and types are checked here, so that an error names the file, not only the key; ranges are
    checked with the whole config, since the command line may complete a preset (threshold null, rank given).
    """
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise UserError(f"preset={name}: no such preset; known presets: {known} (or a path to a .yaml file)")
    try:
        preset = OmegaConf.load(path)
    except Exception as error:  # YAML syntax errors come in many types
        raise UserError(f"preset file {path}: not valid YAML: {_one_line(error)}") from None
    if not isinstance(preset, DictConfig) or not preset:
        raise UserError(f"preset file {path}: {'not a mapping' if preset else 'empty'}; a preset maps run "
                          "settings to values (benchmark: split_digits, train: {lr: 0.01}, ...)")
    try:
        merge_onto(RunConfig, preset)
    except UserError as error:
        raise UserError(f"preset file {path}: {error}") from None
    if preset.get("preset") is not None:
        raise UserError(f"preset file {path}: preset: a preset cannot name another preset")
    return preset


def load_run_config(args: List[str], schema: type = RunConfig) -> DictConfig:
    """Schema defaults, then the preset named on the command line, then the other overrides."""
    overrides = parse_overrides(args)
    layers = []
    preset = overrides.get("preset")
    if preset:
        layers.append(load_preset(str(preset)))
    layers.append(overrides)
    cfg = merge_onto(schema, *layers)
    validate_run(cfg)
    return cfg


def load_sweep_config(args: List[str]) -> DictConfig:
    cfg = load_run_config(args, schema=SweepConfig)
    validate_sweep(cfg)
    return cfg


def _require(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise UserError(f"{key}={value}: {valid}")


def validate_run(cfg: DictConfig) -> None:
    """Range and choice checks the types cannot express (of a run config, or the run part of a sweep's)."""
    _require_finite(cfg)
    _require(cfg.benchmark in BENCHMARKS, "benchmark", cfg.benchmark, f"must be one of {', '.join(BENCHMARKS)}")
    _require(cfg.model in MODELS, "model", cfg.model, f"must be one of {', '.join(MODELS)}")
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
    _require(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _require(t.optimizer in OPTIMIZERS, "train.optimizer", t.optimizer, f"must be one of {', '.join(OPTIMIZERS)}")
    _require(0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)")
    _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _require(t.lr_patience >= 1, "train.lr_patience", t.lr_patience, "must be >= 1")
    _require(t.lr_factor > 1, "train.lr_factor", t.lr_factor, "must be > 1")
    _require(t.lr_min >= 0, "train.lr_min", t.lr_min, "must be >= 0")
    _require(0 < t.valid_fraction < 1, "train.valid_fraction", t.valid_fraction, "must be in (0, 1)")
    n = cfg.ness
    _require(n.threshold is None or n.threshold > 0, "ness.threshold", n.threshold, "must be > 0, or null to use ness.rank alone")
    _require(n.norm in NORMS, "ness.norm", n.norm, f"must be one of {', '.join(NORMS)}")
    _require(n.memory in MEMORIES, "ness.memory", n.memory, f"must be one of {', '.join(MEMORIES)}")
    rank = n.rank
    if rank is not None:
        _require(isinstance(rank, (int, float)) and not isinstance(rank, bool), "ness.rank", rank,
                 "must be an integer count, a fraction in (0, 1], or null")
        _require(rank >= 0, "ness.rank", rank, "must be >= 0 (an integer count or a fraction of the layer width)")
        if isinstance(rank, float):
            _require(rank <= 1, "ness.rank", rank, "a float rank is a fraction of the layer width: must be in [0, 1]")
    _require(n.threshold is not None or rank is not None, "ness.threshold", None,
             "threshold and rank cannot both be null: set at least one")


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
    if s.num_samples is not None:
        _require(s.num_samples >= 1, "sweep.num_samples", s.num_samples, "must be >= 1")
    if s.max_concurrent is not None:
        _require(s.max_concurrent >= 1, "sweep.max_concurrent", s.max_concurrent, "must be >= 1")
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


def help_text(schema: type = RunConfig) -> str:
    """Every key with its default, one per line."""
    lines = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name}={OmegaConf.to_yaml({'v': value}).strip()[3:]}")

    walk(schema(), "")
    return "\n".join(lines)


def _one_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def _describe(error: Exception, merged: DictConfig, layer: Any) -> str:
    """One line naming the key a merge failed on; OmegaConf leaves it out when a whole group or list is at fault."""
    key = getattr(error, "full_key", None) or _failing_key(merged, layer)
    message = _one_line(error)
    if "Key '" in message and "not in" in message or "ConfigKeyError" in type(error).__name__:
        return f"{key}: unknown key (see --help for the valid keys)"
    node = _schema_node(merged, key)
    if OmegaConf.is_dict(node):
        return f"{key}: a group of settings, not a value; set its keys one by one, e.g. {key}.NAME=VALUE (see --help)"
    if OmegaConf.is_list(node):
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


def _schema_node(merged: DictConfig, key: str) -> Any:
    """The schema's node at a dotted key (a group, a list, a value), or None when there is none."""
    parent, _, leaf = key.rpartition(".")
    container = OmegaConf.select(merged, parent) if parent else merged
    return container._get_node(leaf) if OmegaConf.is_dict(container) and leaf in container else None
