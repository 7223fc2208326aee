"""The user's own benchmarks and models: import paths ``module:function`` next to the registries' names.

``benchmark=my_pkg.streams:make_stream`` imports ``my_pkg.streams`` with importlib and takes its
``make_stream``. The working directory is importable, as under ``python -m``, so a ``my_streams.py`` next to
where the command runs is found; on a Ray cluster the sweep ships it through ``runtime_env``. Every way an
import path can be wrong is one ``UserError`` line naming it and what would be valid.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import traceback
from types import ModuleType
from typing import Callable, Mapping, Sequence

from .config import UserError

IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def resolve(key: str, name: str, registry: Mapping[str, Callable], params: Sequence[str], returns: str) -> Callable:
    """The registry's function of that name, or the function an import path points to.

    ``params`` and ``returns`` describe how the function is called (``fn(data_root, seed, ...) -> TaskStream``),
    for the error messages and for checking that its signature accepts that call.
    """
    if name in registry:
        return registry[name]
    call = f"({', '.join(params)}) -> {returns}"
    if ":" not in name:
        raise UserError(f"{key}={name}: must be one of {', '.join(registry)}, or an import path module:function "
                        f"to a function{call}")
    if not IMPORT_PATH.fullmatch(name):
        raise UserError(f"{key}={name}: not an import path; write module:function, e.g. my_pkg.streams:make_stream")
    module_name, _, qualname = name.partition(":")
    found = _attribute(key, name, _import(key, name, module_name), qualname, call)
    _check_call(key, name, found, params, call)
    return found


def describe(error: BaseException) -> str:
    """An exception as one line: type, first line of its message, and where it was raised (file:line)."""
    text = str(error).strip()
    line = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
    frames = traceback.extract_tb(error.__traceback__)
    return f"{line} (at {frames[-1].filename}:{frames[-1].lineno})" if frames else line


def _import(key: str, name: str, module_name: str) -> ModuleType:
    """The module, with the working directory on ``sys.path`` as ``python -m`` puts it there."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # a module written after the folder was first listed is found too
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise UserError(f"{key}={name}: no module named {error.name} (looked in the working directory {cwd} "
                            f"and the installed packages)") from None
        raise UserError(f"{key}={name}: importing {module_name} failed: {describe(error)}") from None
    except Exception as error:  # the user's module fails while it runs: syntax, names, its own imports
        raise UserError(f"{key}={name}: importing {module_name} failed: {describe(error)}") from None


def _attribute(key: str, name: str, module: ModuleType, qualname: str, call: str) -> Callable:
    """``module.<qualname>``, which must exist and be callable."""
    found = module
    for part in qualname.split("."):
        if not hasattr(found, part):
            where = getattr(module, "__file__", None) or module.__name__
            raise UserError(f"{key}={name}: {where} has no {qualname}; define {qualname}{call} there")
        found = getattr(found, part)
    if not callable(found):
        raise UserError(f"{key}={name}: {qualname} is a {type(found).__name__}, not a function; "
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
                        f"it must be a function{call}") from None
