"""The plan: everything a sweep decides before any work, checked before Ray starts or anything is created.

``build_plan`` layers the schema, the space's fixed values and sweep defaults, a preset and the command line
(``config.layered``), checks them, and names the sweep. ``resume_plan`` reads the plan a sweep stored in its
folder (``plan.yaml``) and continues exactly it, refusing a command line that would change results.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import config, results
from ..benchmarks import STREAM_KEYS, stream_settings
from ..config import (
    MAX_SEED,
    RunConfig,
    SweepConfig,
    SweepSettings,
    UserError,
    first_line,
    flatten,
    joins_cluster,
    load_sweep_config,
    merge_onto,
    parse_overrides,
    resolved,
    schema_types,
    unflatten,
    validate_run,
    validate_sweep,
    with_groups,
)
from ..methods import check_run, method_class, method_groups, run_config
from ..metrics import NATURAL_MODE, TEST, VALID, on_split
from ..selection import fresh_seeds
from .code import check_code, code_options
from .columns import column_types
from .lock import check_not_running, check_writable, name_candidates, taken
from .preflight import check_cluster_reachable, check_local_resources
from .space import SearchSpace, known_spaces, load_space, space_from_record

DEFAULT_NUM_SAMPLES = 10


# Keys a resume may change: where and how fast the sweep runs, never what a trial trains.
RESUME_MAY_CHANGE = ("resume", "output_dir", "sweep.name", "sweep.max_concurrent", "ray.address", "wandb.mode",
                     "trial.max_failures", "trial.keep_checkpoints", "dry_run")


# in a confirmation trial's Tune config: the search row it reruns (the table's column of that name)
CONFIRMS = "confirms"


MAX_STREAMS = 16  # distinct task streams a sweep may hold in Ray's object store (searched stream-shaping keys)


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
    def by_method(self) -> bool:
        """The space searches ``method``: one study per method, ``num_samples`` trials each (``PerMethodSearch``)."""
        return "method" in self.space.search

    @property
    def total_trials(self) -> int:
        """Trials the search runs: ``num_samples``, for each method when it searches ``method``."""
        return self.num_samples * (len(self.space.search["method"].values) if self.by_method else 1)

    def trials_text(self) -> str:
        """'16 trials', or for a sweep over methods '6 methods x 8 trials (one study each)'."""
        if not self.by_method:
            return f"{self.num_samples} trials"
        return f"{len(self.space.search['method'].values)} methods x {self.num_samples} trials (one study each)"

    def confirmation_text(self) -> str:
        """What the confirmation will rerun, in one line."""
        top = self.cfg.sweep.confirm_top
        if not top:
            return ("confirmation: off (sweep.confirm_top=0): the best row's numbers are the search's own, the best "
                    "of noisy draws")
        per_method = " per method" if self.by_method else ""
        return (f"confirmation: the best {top}{per_method} by {self.metrics[0]} rerun on fresh seeds "
                f"{', '.join(map(str, self.confirm_seeds))}; the winner is the best confirmed {self.metrics[0]}")

    def method_space(self, method: str) -> Dict[str, Any]:
        """The searched keys one method's study proposes: the shared ones (``train.lr``, ...) and its own group's."""
        groups = self.method_groups()
        others = {group for name, group in groups.items() if group and name != method}
        return {key: dist for key, dist in self.space.search.items()
                if key != "method" and key.partition(".")[0] not in others}

    @property
    def confirm_seeds(self) -> List[int]:
        """The seeds each confirmed configuration reruns on: after every seed the search could use (its seeds,
        or the top of the searched seed's range), so none is shared with a search trial."""
        used = self.seeds or [max(self.space.search["seed"].values)]
        return fresh_seeds(used, self.cfg.sweep.confirm_seeds)

    @property
    def selected_on_test(self) -> bool:
        """An objective is a test metric (``sweep.select_on_test=true``): every view of the results says so."""
        return any(metric in NATURAL_MODE for metric in self.metrics)

    @property
    def signal(self) -> str:
        """What ASHA compares after each task: the mean accuracy over the tasks seen so far, on the split the
        sweep selects on."""
        return on_split("acc_seen", TEST if self.selected_on_test else VALID)

    @property
    def folder(self) -> results.SweepFolder:
        return results.SweepFolder(str(self.cfg.output_dir), self.name)

    @property
    def sweep_dir(self) -> str:
        return self.folder.location

    def run_settings(self) -> Dict[str, Any]:
        """The run-config part every trial starts from (with the settings group of each method it may run), with
    the device resolved."""
        everything = resolved(self.cfg)
        sweep_only = {f.name for f in dataclasses.fields(SweepConfig)} - {f.name for f in dataclasses.fields(RunConfig)}
        settings = {key: value for key, value in everything.items() if key not in sweep_only}
        settings.update(device=self.device, seeds=None)
        if self.seeds:
            settings["seed"] = self.seeds[0]
        return settings

    def run_schema(self) -> type:
        """The run-config schema of the trials: ``RunConfig`` with the settings group of each method they may run."""
        return with_groups(RunConfig, sweep_groups(self.cfg, self.space.search))

    def method_groups(self) -> Dict[str, Optional[str]]:
        """Each method the trials may run, with its settings group (None: fine-tuning has none)."""
        return {name: method_class(name).group for name in code_options(self.cfg, self.space.search)["method"]}

    def trial_seeds(self, cfg: DictConfig, params: Optional[Dict[str, Any]] = None) -> List[int]:
        """The seeds one trial runs: the sweep's, or the trial's own (sampled, or a confirmation's fresh) seed."""
        confirming = params is not None and CONFIRMS in params
        return list(self.seeds) if self.seeds and not confirming else [int(cfg.seed)]

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
    given = flatten(OmegaConf.to_container(overrides))
    methods = _space_methods(space, given, config.preset_layer(overrides))
    own, others = method_groups(methods)
    run_keys = schema_types(with_groups(RunConfig, own))
    for section, keys in (("search", space.search), ("fixed", space.fixed)):
        for key in keys:
            group = key.partition(".")[0]
            if group in others:
                raise UserError(f"{space.source}: {section}.{key}: a setting of method={others[group]}, and this "
                                f"sweep's method is {' or '.join(methods)}; drop it, or sweep method={others[group]}")
            if key not in run_keys:
                raise UserError(f"{space.source}: {section}.{key}: unknown key; spaces search and fix run "
                                  "settings such as train.lr or ness.threshold (python -m ness_sweep.train --help)")
    where_trials_run = {"ray": OmegaConf.to_container(overrides).get("ray", {})}  # a cluster's GPUs are not here
    schema = with_groups(SweepConfig, own)
    for key, value in space.fixed.items():
        _checked(lambda: validate_run(merge_onto(schema, where_trials_run, {"method": methods[0]},
                                                 unflatten({key: value}))),
                 f"{space.source}: fixed.{key}")
    _checked(lambda: merge_onto(SweepSettings, space.sweep), f"{space.source}: sweep")
    cfg = load_sweep_config(list(args), method_groups, base=[unflatten(space.fixed), {"sweep": space.sweep}],
                            searched_methods=methods if "method" in space.search else ())
    plan = _complete_plan(cfg, space, list(args))
    plan.name = _sweep_name(plan, now or datetime.now())
    check_writable(plan.cfg.output_dir, plan.name)
    return plan


def _space_methods(space: SearchSpace, command_line: Dict[str, Any], preset: Optional[DictConfig]) -> List[str]:
    """The methods a sweep's trials may run, before its config is layered: the command line's, else the options
    the space searches, else the one it or the preset fixes, else the default."""
    if "method" not in command_line and "method" in space.search:
        return [str(option) for option in space.search["method"].values]
    fixed = {"method": space.fixed["method"]} if "method" in space.fixed else {}
    return [config.method_of([fixed, preset, command_line])]


def sweep_groups(cfg: DictConfig, search: Dict[str, Any]) -> Dict[str, type]:
    """The settings groups of every method a sweep's trials may run (``code.code_options``)."""
    return method_groups(code_options(cfg, search)["method"])[0]


def _complete_plan(cfg: DictConfig, space: SearchSpace, command_line: List[str]) -> SweepPlan:
    """Check the validated config against the space and decide objectives, scheduler, seeds and device."""
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
    everything, schema = resolved(cfg), with_groups(SweepConfig, sweep_groups(cfg, searched))
    for key, dist in searched.items():
        for value in dist.values:  # every sample lies between the bounds (or is an option): check those
            _checked(lambda: _validate_trial(merge_onto(schema, everything, unflatten({key: value}))),
                     f"{space.source}: search.{key}: {dist.kind} value {value!r}")
    metrics, modes = _objectives(cfg, given)
    # ASHA compares every trial at its rungs: in a sweep over methods it would stop one method's trials for
    # another's early accuracy, and the methods' budgets would no longer be equal
    scheduler = cfg.sweep.scheduler or ("asha" if len(metrics) == 1 and "method" not in searched else "fifo")
    listed = cfg.trial.seeds or cfg.seeds
    if "seed" in searched and listed:
        raise UserError(f"{space.source}: search.seed: the space searches the seed, so trial.seeds / seeds "
                          "cannot fix it too; drop one of them")
    seeds = None if "seed" in searched else list(listed or [cfg.seed])
    plan = SweepPlan(cfg, space, metrics, modes, scheduler, cfg.sweep.num_samples or DEFAULT_NUM_SAMPLES,
                     seeds, name=str(cfg.sweep.name or ""), device=_trial_device(cfg), command_line=command_line)
    if plan.by_method:
        for method in map(str, space.search["method"].values):
            if not plan.method_space(method):
                raise UserError(f"{space.source}: search.method: {method} would search nothing (each method searches "
                                "its own settings and the shared keys such as train.lr); search train.lr too")
    if cfg.sweep.confirm_top and plan.confirm_seeds[-1] > MAX_SEED:
        raise UserError(f"sweep.confirm_seeds={cfg.sweep.confirm_seeds}: the confirmation's fresh seeds would pass "
                        f"{MAX_SEED} (numpy's largest); search lower seeds or set sweep.confirm_top=0")
    # choice options of mixed types fail here, not at the end
    column_types(plan.run_settings(), space, plan.run_schema())
    stream_variants(plan)  # searched stream-shaping keys: finitely many streams, or refused here
    check_code(cfg, searched)  # every benchmark, model and method a trial may name resolves
    return plan


def resume_plan(args: List[str], overrides: DictConfig) -> SweepPlan:
    """The plan stored in ``OUTPUT_DIR/NAME/plan.yaml``, with only the keys in ``RESUME_MAY_CHANGE`` taken
    from this command line; any other key that differs from the stored plan is refused, naming the keys."""
    name = overrides.get("sweep", {}).get("name")
    if not name:
        raise UserError("resume=true: give sweep.name=NAME of the sweep to continue")
    output_dir = str(overrides.get("output_dir") or SweepConfig.output_dir)
    folder = results.SweepFolder(output_dir, str(name))
    if "/" in folder.name or not folder.exists():
        raise UserError(f"resume=true: no sweep {name} in {output_dir} to resume")
    check_not_running(folder)
    if not folder.exists(folder.PLAN):
        raise UserError(f"resume=true: {folder.location} has no {folder.PLAN} (started by an older ness_sweep, "
                        "or not a sweep folder): its plan is unknown, so it cannot be continued safely")
    try:
        with folder.filesystem.open_input_stream(folder.path(folder.PLAN)) as stream:
            record = OmegaConf.to_container(OmegaConf.create(stream.read().decode()))
        space = space_from_record(record["space"])
        schema = with_groups(SweepConfig, sweep_groups(OmegaConf.create(record["config"]), space.search))
        stored = merge_onto(schema, record["config"])
        stored_line = flatten(OmegaConf.to_container(parse_overrides(record["command_line"])))
    except (UserError, KeyError, TypeError, ValueError, OmegaConfBaseException) as error:
        raise UserError(f"{folder.shown(folder.PLAN)}: unreadable plan ({first_line(error)})") from None
    given = flatten(OmegaConf.to_container(overrides))
    stored_values = flatten(resolved(stored))
    changed, allowed = [], {}
    for key, value in given.items():
        if key in RESUME_MAY_CHANGE:
            allowed[key] = value
        elif key in ("space", "preset"):
            if str(stored_line.get(key)) != str(value):
                changed.append(key)
        elif (flatten(resolved(merge_onto(schema, record["config"], unflatten({key: value}))))[key]
              != stored_values[key]):
            changed.append(key)
    if changed:
        raise UserError(f"resume=true: {', '.join(changed)} differ from the plan the sweep started with "
                        f"({folder.shown(folder.PLAN)}); a resume continues that plan, and may change only "
                          f"{', '.join(k for k in RESUME_MAY_CHANGE if k not in ('resume', 'sweep.name'))}")
    cfg = merge_onto(schema, record["config"], unflatten(allowed),
                     {"resume": True, "output_dir": output_dir, "sweep": {"name": str(name)}})
    validate_run(cfg)
    validate_sweep(cfg)
    plan = _complete_plan(cfg, space, list(record["command_line"]))
    plan.name = str(name)
    check_writable(output_dir, plan.name)
    return plan


def write_plan(plan: SweepPlan) -> None:
    """``plan.yaml``: the resolved plan and the command line, the only thing ``resume=true`` continues."""
    text = ("# The plan this sweep started with; `resume=true sweep.name=NAME` continues exactly this plan.\n"
            + OmegaConf.to_yaml(OmegaConf.create(plan.record())))
    results.write_atomically(plan.folder.filesystem, plan.folder.path(plan.folder.PLAN), text.encode())


def _checked(check: Callable[[], Any], where: str) -> None:
    try:
        check()
    except UserError as error:
        raise UserError(f"{where}: {error}") from None


def _objectives(cfg: DictConfig, command_line: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """Metrics and modes; a metric named on the command line brings its natural mode unless a mode is given too.
    Validation metrics by default; a test metric only with ``sweep.select_on_test=true`` (the selection protocol,
    docs/concepts/selection.md): the best of many noisy test numbers is an optimistic number."""
    on_test = bool(cfg.sweep.select_on_test)
    natural = {on_split(m, split): mode for split in (VALID, TEST) for m, mode in NATURAL_MODE.items()}
    metric = cfg.sweep.metric if cfg.sweep.metric is not None else on_split("acc", TEST if on_test else VALID)
    metrics = [metric] if isinstance(metric, str) else list(metric)
    for m in metrics:
        if m in NATURAL_MODE and not on_test:
            raise UserError(f"sweep.metric={m}: a test metric; selecting on the test set reports the best of noisy "
                            f"draws, so it needs the opt-in sweep.select_on_test=true "
                            f"(or select on {on_split(m, VALID)})")
        if m not in natural:
            raise UserError(f"sweep.metric={m}: must be one of {', '.join(on_split(n, VALID) for n in NATURAL_MODE)} "
                            f"(or a list of them; {', '.join(NATURAL_MODE)} with sweep.select_on_test=true)")
    if len(set(metrics)) != len(metrics) or not metrics:
        raise UserError(f"sweep.metric={metrics}: list each metric once")
    if on_test and not any(m in NATURAL_MODE for m in metrics):
        raise UserError(f"sweep.select_on_test=true: the objectives ({', '.join(metrics)}) are validation metrics; "
                        "drop select_on_test, or name a test metric in sweep.metric")
    mode = cfg.sweep.mode
    if mode is None or ("sweep.metric" in command_line and "sweep.mode" not in command_line):
        mode = [natural[m] for m in metrics]
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
            raise taken(results.SweepFolder(str(cfg.output_dir), name))
        return name
    automatic = f"{plan.space.name}-{now:%Y%m%d-%H%M%S}"  # the claim moves on if a driver takes it meanwhile
    return next(name for name in name_candidates(automatic) if not results.exists(fs, f"{root}/{name}"))


def trial_run_config(settings: Dict[str, Any], params: Dict[str, Any]) -> DictConfig:
    """The run config of one trial: the sweep's settings with the sampled values, holding only the settings
    group of the trial's method (a sweep over methods holds each option's), validated."""
    cfg = run_config(settings, unflatten({key: value for key, value in params.items() if key != CONFIRMS}))
    _validate_trial(cfg)
    return cfg


def _validate_trial(cfg: DictConfig) -> None:
    """A run config's ranges (``config.validate_run``) and its method's own checks (``Method.check_config``)."""
    validate_run(cfg)
    check_run(cfg)


def stream_key(settings: Dict[str, Any]) -> str:
    """A stream's identity: its stream-shaping settings (``benchmarks.stream_settings``) as canonical JSON."""
    return json.dumps(settings, sort_keys=True)


def stream_variants(plan: SweepPlan) -> Dict[str, Tuple[DictConfig, int]]:
    """Every stream some trial may train on, keyed by ``stream_key``: a run config and seed that make it.

    Searched keys that shape the stream (``benchmarks.STREAM_KEYS``) take each of their options: choice, or
    every integer of an int range. A continuous distribution over such a key would need a new stream per
    trial, and more than ``MAX_STREAMS`` streams would crowd the object store: both are refused.
    """
    shaping = {}
    for key, dist in plan.space.search.items():
        if key not in STREAM_KEYS:
            continue
        if dist.kind in ("uniform", "loguniform"):
            raise UserError(f"{plan.space.source}: search.{key}: {key} shapes the task stream, which the driver "
                              f"loads once per value; search it with choice (or int), not {dist.kind}")
        shaping[key] = dist
    count = math.prod(dist.size for dist in shaping.values()) * len(plan.seeds or [None])
    if count > MAX_STREAMS:
        raise UserError(f"{plan.space.source}: the searched stream-shaping keys ({', '.join(shaping)}) give {count} "
                          f"task streams; a sweep holds at most {MAX_STREAMS}: search fewer values")
    options = {key: dist.options() for key, dist in shaping.items()}  # counted first: listed only when few
    return streams_of(plan, [dict(zip(options, combo)) for combo in itertools.product(*options.values())])


def streams_of(plan: SweepPlan, trials: List[Dict[str, Any]]) -> Dict[str, Tuple[DictConfig, int]]:
    """The streams that trials with these Tune configs train on, keyed by ``stream_key``: a run config and seed
    that make each (``SweepPlan.trial_seeds``: the sweep's seeds, or a confirmation's own)."""
    variants: Dict[str, Tuple[DictConfig, int]] = {}
    for params in trials:
        cfg = trial_run_config(plan.run_settings(), params)
        for seed in plan.trial_seeds(cfg, params):
            variants.setdefault(stream_key(stream_settings(cfg, seed)), (cfg, seed))
    return variants
