"""The user's own benchmarks and models: import paths ``module:function`` next to the registries' names.

``benchmark=my_pkg.streams:make_stream`` imports ``my_pkg.streams`` with importlib and takes its
``make_stream``. The working directory is importable, as under ``python -m``, so a ``my_streams.py`` next to
where the command runs is found; on a Ray cluster the sweep ships it through ``runtime_env``. Every way an
import path can be wrong is one ``UserError`` line naming it and what would be valid, and so is a model that
cannot take one training step (``check_model_trains``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import site
import sys
import sysconfig
import traceback
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable, List, Mapping, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .config import UserError, first_line
from .data import TaskStream

IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def resolve(key: str, name: str, registry: Mapping[str, Callable], params: Sequence[str], returns: str,
            kind: str = "function") -> Callable:
    """The registry's function (or class: ``kind``) of that name, or the one an import path points to.

    ``params`` and ``returns`` describe how it is called (``fn(data_root, seed, ...) -> TaskStream``), for the
    error messages and for checking that its signature accepts that call.
    """
    if name in registry:
        return registry[name]
    call = f"({', '.join(params)}) -> {returns}"
    if ":" not in name:
        raise UserError(f"{key}={name}: must be one of {', '.join(registry)}, or an import path module:{kind} "
                        f"to a {kind}{call}")
    if not IMPORT_PATH.fullmatch(name):
        raise UserError(f"{key}={name}: not an import path; write module:{kind}, e.g. my_pkg.streams:make_stream")
    module_name, _, qualname = name.partition(":")
    found = _attribute(key, name, _import(key, name, module_name), qualname, call, kind)
    _check_call(key, name, found, params, f"{kind}{call}")
    return found


def describe(error: BaseException) -> str:
    """An exception as one line: type, first line of its message, and where it was raised (file:line)."""
    line = first_line(error, with_type=True)
    frames = traceback.extract_tb(error.__traceback__)
    return f"{line} (at {frames[-1].filename}:{frames[-1].lineno})" if frames else line


def _import(key: str, name: str, module_name: str) -> ModuleType:
    """The module, with the working directory on ``sys.path`` as ``python -m`` puts it there."""
    cwd = _working_directory_importable()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise UserError(f"{key}={name}: no module named {error.name} (looked in the working directory {cwd} "
                            f"and the installed packages)") from None
        raise UserError(f"{key}={name}: importing {module_name} failed: {describe(error)}") from None
    except Exception as error:  # the user's module fails while it runs: syntax, names, its own imports
        raise UserError(f"{key}={name}: importing {module_name} failed: {describe(error)}") from None
    except (SystemExit, KeyboardInterrupt) as error:  # a script's sys.exit() would end the run silently
        raise UserError(f"{key}={name}: importing {module_name} tries to end the program ({describe(error)}); "
                        "a module that ness_sweep imports must not exit: guard a script's own code with "
                        "`if __name__ == \"__main__\":`") from None


def _working_directory_importable() -> str:
    """Put the working directory on ``sys.path`` (as ``python -m`` does) and return it."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # a module written after the folder was first listed is found too
    return cwd


def _attribute(key: str, name: str, module: ModuleType, qualname: str, call: str, kind: str) -> Callable:
    """``module.<qualname>``, which must exist and be callable."""
    found = module
    for part in qualname.split("."):
        if not hasattr(found, part):
            where = getattr(module, "__file__", None) or module.__name__
            raise UserError(f"{key}={name}: {where} has no {qualname}; define {qualname}{call} there")
        found = getattr(found, part)
    if not callable(found):
        raise UserError(f"{key}={name}: {qualname} is a {type(found).__name__}, not a {kind}; "
                        f"it must be {qualname}{call}")
    return found


def _check_call(key: str, name: str, function: Callable, params: Sequence[str], call: str) -> None:
    """Refuse a function that cannot take the call it will get, before any work rather than after."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins and C functions have none to read: their call will tell
        return
    try:
        signature.bind(*params)
    except TypeError:
        raise UserError(f"{key}={name}: takes {signature}, but is called as ({', '.join(params)}); "
                        f"it must be a {call}") from None


def check_model_trains(model: nn.Module, stream: TaskStream, batch_size: int, named: str) -> None:
    """One training step of a freshly built ``model`` (``named``: ``model=NAME`` as errors name it) before any
    work: a model that fails only in train mode or on batches larger than the two samples the contract check
    runs, returns logits that are not floating point, or has nothing to train is one ``UserError`` line here,
    not a crash (or a diverged record) in every run. The model is left with gradients: build a new one to train."""
    problem = training_step_problem(model, stream, batch_size)
    if problem:
        raise UserError(f"{named}: {problem}")


def training_step_problem(model: nn.Module, stream: TaskStream, batch_size: int) -> Optional[str]:
    """Why a training step (train mode, the first ``batch_size`` training samples of the first task, cross-entropy,
    backward) fails, or None."""
    if not any(parameter.requires_grad for parameter in model.parameters()):
        return "has no parameters that require gradients; there is nothing to train"
    task = stream.tasks[0]
    x, y = task.inputs(task.x_train[:batch_size]), task.y_train[:batch_size]
    wanted = (len(y), task.num_classes)
    model.train()
    try:
        out = model(x, 0)
        if not isinstance(out, Tensor) or not out.is_floating_point() or tuple(out.shape) != wanted:
            got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
            return (f"in train mode, forward(x, 0) on a batch of {len(y)} gives {got}; training needs "
                    f"floating-point logits of shape {wanted}")
        F.cross_entropy(out, y).backward()
    except Exception as error:  # the model's own code fails: how depends on it
        return f"a training step (train mode, a batch of {len(y)} of task 0) fails: {describe(error)}"
    return None


def local_module_paths(names: Iterable[str]) -> List[str]:
    """Where the top-level modules behind these import paths live here, for Ray's ``runtime_env`` ``py_modules``:
    a package's folder or a module's ``.py`` file. Registry names, ``ness_sweep`` itself and modules of
    installed packages (site-packages, the standard library) are left out: a cluster's nodes have their own."""
    installed = [Path(p).resolve() for p in {*site.getsitepackages(), site.getusersitepackages(),
                                              *sysconfig.get_paths().values()}]
    _working_directory_importable()
    found: List[str] = []
    for name in names:
        if ":" not in name:
            continue
        top = name.partition(":")[0].split(".")[0]
        spec = importlib.util.find_spec(top) if top != "ness_sweep" else None
        if spec is None:
            continue
        locations = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
        if len(locations) != 1 or not os.path.exists(locations[0]):
            continue  # a namespace package spread over folders, or a built-in: nothing to ship
        path = Path(locations[0]).resolve()
        if not any(path.is_relative_to(root) for root in installed) and str(path) not in found:
            found.append(str(path))
    return found
