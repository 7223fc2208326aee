"""Typed settings: one schema, command-line ``key=value`` overrides, validation before any work.

Every default lives here (DESIGN.md, "one fact in one place"). ``load_run_config`` and
``load_sweep_config`` are the only ways in; both reject unknown keys and bad values with a
``ConfigError`` whose message is one line naming the key and what would be valid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRESET_DIR = Path(__file__).parent / "presets"

BENCHMARKS = ("permuted_digits", "split_digits", "split_cifar100", "five_datasets", "split_miniimagenet")
MODELS = ("auto", "mlp", "alexnet", "resnet18")
METHODS = ("ness", "finetune")
NORMS = ("frobenius", "nuclear")
MEMORIES = ("replay", "stream")
OPTIMIZERS = ("sgd", "adam")
TASK_ORDERS = ("fixed", "seeded")


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the key and what is valid (exit code 2)."""


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
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"argument {arg!r}: expected key=value (see --help for the keys)")
    try:
        return OmegaConf.from_dotlist(list(args))
    except OmegaConfBaseException as error:
        raise ConfigError(f"could not parse arguments: {_one_line(error)}") from None


def merge_onto(schema: Any, *layers: Any) -> DictConfig:
    """Merge plain layers onto a typed schema; unknown keys and wrong types become ``ConfigError``."""
    merged = OmegaConf.structured(schema)
    OmegaConf.set_struct(merged, True)
    for layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as error:
            raise ConfigError(_describe(error, schema)) from None
    return merged


def load_preset(name: str) -> DictConfig:
    """A paper preset by name (``ness_sweep/presets/<name>.yaml``) or a path to a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ConfigError(f"preset={name}: no such preset; known presets: {known} (or a path to a .yaml file)")
    try:
        return OmegaConf.load(path)
    except Exception as error:  # YAML syntax errors come in many types
        raise ConfigError(f"preset file {path}: not valid YAML: {_one_line(error)}") from None


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
        raise ConfigError(f"{key}={value}: {valid}")


def validate_run(cfg: DictConfig) -> None:
    """Range and choice checks the types cannot express."""
    _require(cfg.benchmark in BENCHMARKS, "benchmark", cfg.benchmark, f"must be one of {', '.join(BENCHMARKS)}")
    _require(cfg.model in MODELS, "model", cfg.model, f"must be one of {', '.join(MODELS)}")
    _require(cfg.method in METHODS, "method", cfg.method, f"must be one of {', '.join(METHODS)}")
    _require(cfg.task_order in TASK_ORDERS, "task_order", cfg.task_order, f"must be one of {', '.join(TASK_ORDERS)}")
    device = cfg.device
    _require(device in ("auto", "cpu", "cuda") or device.startswith("cuda:"), "device", device,
             "must be auto, cpu, cuda or cuda:N")
    if cfg.seeds is not None:
        _require(len(cfg.seeds) > 0, "seeds", list(cfg.seeds), "must list at least one seed")
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


def validate_sweep(cfg: DictConfig) -> None:
    tr = cfg.trial
    _require(tr.cpu > 0, "trial.cpu", tr.cpu, "must be > 0")
    _require(tr.gpu >= 0, "trial.gpu", tr.gpu, "must be >= 0 (fractions like 0.25 pack several trials per GPU)")
    _require(tr.max_failures >= 0, "trial.max_failures", tr.max_failures, "must be >= 0")
    if tr.seeds is not None:
        _require(len(tr.seeds) > 0, "trial.seeds", list(tr.seeds), "must list at least one seed")
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


def _describe(error: OmegaConfBaseException, schema: type) -> str:
    key = getattr(error, "full_key", None) or "?"
    message = _one_line(error)
    if "Key '" in message and "not in" in message or "ConfigKeyError" in type(error).__name__:
        return f"{key}: unknown key (see --help for the valid keys)"
    return f"{key}: {message}"
