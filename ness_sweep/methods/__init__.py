"""The method registry: every shipped method by name, a user's own by import path (``method=module:Class``),
and the trainer a config asks for.

Callers (``ness_sweep.train``, a sweep's trial) take a method from here and hand it to the loop
(``trainer.Trainer``), which knows only the base type. A method's settings group is named by its class
(``group``, ``Settings``); a config holds only the group of the method it runs (``config.layered``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type

import torch
from omegaconf import DictConfig

from .. import config
from ..benchmarks import BENCHMARKS
from ..config import RunConfig, UserError, help_text, merge_onto, with_groups
from ..data import TaskStream
from ..models import MODELS, check_model_fits, model_label
from ..trainer import EpochProgress, Trainer
from ..user_code import resolve
from .base import Method
from .ewc import Ewc
from .gpm import Gpm
from .lwf import Lwf
from .ness import Ness
from .sgp import Sgp

METHODS: Dict[str, Type[Method]] = {
    "finetune": Method,
    "ness": Ness,
    "gpm": Gpm,
    "sgp": Sgp,
    "ewc": Ewc,
    "lwf": Lwf,
}
METHOD_PARAMS = ("cfg", "model", "stream")  # how the loop builds a method: Class(cfg, model, stream)
GROUP_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def method_class(name: str) -> Type[Method]:
    """The class of a registered method or of an import path ``module:Class``, checked against the contract:
    a subclass of ``Method`` whose settings group, if any, is a new name with a dataclass schema."""
    found = resolve("method", name, METHODS, METHOD_PARAMS, "a ness_sweep.methods.Method", kind="class")
    if name in METHODS:
        return found
    if not (isinstance(found, type) and issubclass(found, Method)):
        raise UserError(f"method={name}: is a {type(found).__name__}, not a subclass of "
                        "ness_sweep.methods.base.Method (from ness_sweep.methods import Method)")
    if found.group is not None:
        taken = {f.name for f in dataclasses.fields(RunConfig)} | set(shipped_groups())
        if not isinstance(found.group, str) or not GROUP_NAME.fullmatch(found.group) or found.group in taken:
            raise UserError(f"method={name}: group={found.group!r} must be a new lower-case name for its settings "
                            f"group, not one of {', '.join(sorted(taken))}")
        if not dataclasses.is_dataclass(found.Settings):
            raise UserError(f"method={name}: group={found.group!r} needs Settings, a dataclass of its settings "
                            "and their defaults")
    return found


def check_method(name: str) -> None:
    """Refuse a method that names no class before any work: a one-line UserError naming the valid ones."""
    method_class(name)


def shipped_groups() -> Dict[str, str]:
    """Each shipped method's settings group, with the method it belongs to."""
    return {cls.group: name for name, cls in METHODS.items() if cls.group}


def shipped_schema() -> type:
    """``RunConfig`` with every shipped method's settings group: each shipped key with its default."""
    return with_groups(RunConfig, {cls.group: cls.Settings for cls in METHODS.values() if cls.group})


def method_groups(methods: Sequence[str]) -> Tuple[Dict[str, type], Dict[str, str]]:
    """``config.MethodGroups``: the groups these methods read, and every other shipped group with its method."""
    own = {}
    for name in methods:
        cls = method_class(name)
        if cls.group:
            own[cls.group] = cls.Settings
    return own, {group: name for group, name in shipped_groups().items() if group not in own}


def run_config(settings: Dict[str, Any], values: Dict[str, Any]) -> DictConfig:
    """The run config of ``settings`` (a resolved config, maybe a sweep's holding several methods' groups) with
    ``values`` (nested; a sweep over methods samples every option's settings) over them: it holds only the
    settings group of its own method. Not validated."""
    own, others = method_groups([str(values.get("method", settings["method"]))])
    return merge_onto(with_groups(RunConfig, own), *({key: value for key, value in layer.items() if key not in others}
                                                      for layer in (settings, values)))


def load_run_config(args: Sequence[str]) -> DictConfig:
    """One run's settings from ``key=value`` strings (``config.load_run_config`` with the registry's groups),
    validated by the schema and by the method."""
    cfg = config.load_run_config(list(args), groups=method_groups)
    check_run(cfg)
    return cfg


def check_run(cfg: DictConfig) -> None:
    """The method's own checks of a run config (``Method.check_config``), after the schema's."""
    method_class(cfg.method).check_config(cfg)


def make_trainer(cfg: DictConfig, stream: TaskStream, device: Optional[torch.device] = None,
                 log: Optional[Callable[[str], None]] = print,
                 on_epoch: Optional[Callable[[EpochProgress], None]] = None) -> Trainer:
    """The loop with ``cfg.method``: what every caller builds, so the method is never silently another."""
    return Trainer(cfg, stream, method_class(cfg.method), device, log, on_epoch)


def check_fits(cfg: DictConfig, stream: TaskStream) -> None:
    """The model fits the stream (``models.check_model_fits``) and the method can train it (a layer NESS cannot
    adapt, for one): one line naming the model, before any training."""
    model = check_model_fits(cfg, stream)
    problem = method_class(cfg.method).model_problem(cfg, model)
    if problem:
        raise UserError(f"{model_label(cfg, stream)}: {problem}")


def groups_help() -> str:
    """``--help``'s settings of each method that has some, group by group."""
    return "\n".join(f"method={name} reads:\n{help_text(cls.Settings, prefix=cls.group + '.')}"
                     for name, cls in METHODS.items() if cls.group)


def registered_names() -> str:
    """The shipped benchmarks, models and methods, for ``--help``: the registries themselves, never a copy."""
    return (f"benchmarks: {', '.join(BENCHMARKS)}\nmodels: {', '.join(MODELS)}\nmethods: {', '.join(METHODS)}\n"
            "(benchmark= and model= also take an import path module:function, method= one to module:Class: "
            "see docs/extending.md)")
