"""Search-space files: ``search_spaces/NAME.yaml`` or a user's file, parsed and checked with no Ray, torch or
Optuna import; every malformed case is a ``UserError`` naming the file and the key."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from ..config import RUN_ONLY_KEYS, UserError, first_line, flatten, run_only

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")


SPACE_SECTIONS = ("description", "search", "fixed", "sweep")


@dataclass(frozen=True)
class Distribution:
    """One searched key's distribution, as the space file states it."""

    kind: str  # one of DISTRIBUTIONS
    values: Tuple[Any, ...]  # (low, high) for loguniform / uniform / int (inclusive); the options for choice

    @property
    def size(self) -> Optional[int]:
        """How many values a search may give: choice's options, an int range's integers (counted, never listed:
        ``seed: {int: [0, 4294967295]}`` is four billion), None for a continuous distribution."""
        if self.kind == "choice":
            return len(self.values)
        return self.values[1] - self.values[0] + 1 if self.kind == "int" else None

    def options(self) -> List[Any]:
        """Every value a search may give (choice and int only); check ``size`` first: an int range is listed whole."""
        return list(range(self.values[0], self.values[1] + 1)) if self.kind == "int" else list(self.values)

    def to_optuna(self):
        """Optuna's distribution (Optuna imported here: reading a space needs no Optuna)."""
        import optuna

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
        return Path(__file__).resolve().parents[2] / "search_spaces"


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
        raise UserError(f"{source}: not valid YAML: {first_line(error)}") from None
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
    fixed = flatten(raw.get("fixed") or {})
    for section, keys in (("search", search), ("fixed", fixed)):
        for key in keys:
            if key in RUN_ONLY_KEYS:
                raise UserError(f"{source}: {section}.{key}: {run_only(key)}")
    both = [key for key in search if key in fixed]
    if both:
        raise UserError(f"{source}: {', '.join(both)}: both searched and fixed; a key is either searched (search) "
                        "or fixed (fixed): drop it from one of them")
    return SearchSpace(
        name=name,
        source=source,
        description=str(raw.get("description") or ""),
        search={key: parse_distribution(spec, f"{source}: search.{key}") for key, spec in search.items()},
        fixed=fixed,
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


def space_from_record(record: Dict[str, Any]) -> SearchSpace:
    """A space as ``SweepPlan.record`` stored it (the searched keys already parsed and checked once)."""
    search = {key: parse_distribution(spec, f"{record['source']}: search.{key}")
              for key, spec in record["search"].items()}
    return SearchSpace(record["name"], record["source"], record["description"], search, dict(record["fixed"]),
                       dict(record["sweep"]))
