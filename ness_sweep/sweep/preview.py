"""What a sweep would do, worked out without starting anything: the trials that fit at once, and the plan text
that ``dry_run=true`` prints (no Ray, no W&B, no data, no folder: this module imports none of them)."""

from __future__ import annotations

import shlex
from typing import Any, Dict, List

from .. import results
from ..config import argument_value, flatten, joins_cluster, resolved
from ..leaderboard import random_search_note, status_text
from .plan import SweepPlan
from .preflight import concurrency_text
from .space import Distribution

# Groups of the sweep config that say how the sweep runs, not what a trial trains.
SWEEP_GROUPS = ("sweep", "trial", "ray", "wandb")


def distribution_text(dist: Distribution) -> str:
    low_high = ", ".join(argument_value(v) for v in dist.values)
    if dist.kind == "choice":
        return f"choice of {low_high}"
    if dist.kind == "int":
        return f"int in [{low_high}] (both ends included)"
    return f"{dist.kind} in [{low_high}]"


def _settings(values: Dict[str, Any]) -> List[str]:
    return [f"  {key}={argument_value(value)}" for key, value in values.items()]


def _recorded(plan: SweepPlan) -> str:
    """What a resumed sweep's table holds so far."""
    folder = plan.folder
    if not folder.exists(folder.TABLE):
        return "no trial recorded yet"
    statuses = results.read_table(folder.location).column("status").to_pylist()
    return f"{len(statuses)} trials recorded ({status_text(statuses)}); the resume continues those not ended"


def describe(plan: SweepPlan) -> str:
    """The resolved plan, as ``dry_run=true`` prints it: where results go, what is searched and how, resources
    and concurrency, then every fixed setting and every sweep setting (as ``key=value``)."""
    cfg, space, folder = plan.cfg, plan.space, plan.folder
    shown = [a for a in plan.command_line if not a.startswith("dry_run=")]
    lines = ["dry run: the plan below; nothing was started or created"]
    if cfg.resume:
        lines += [f"resume of sweep {plan.name}: continues the stored plan {folder.shown(folder.PLAN)}",
                  f"  started as: {shlex.join(['python', '-m', 'ness_sweep.run', *shown])}",
                  f"  {_recorded(plan)}"]
    else:
        lines.append(f"new sweep {plan.name}" + ("" if cfg.sweep.name else " (named from the time now: give "
                                                                           "sweep.name=NAME to keep this folder)"))
    wandb = "" if cfg.wandb.mode == "disabled" else f", {folder.WANDB}/ for {cfg.wandb.mode} W&B runs"
    lines.append(f"results: {folder.location}/ ({folder.TABLE}, {folder.PLAN}, {folder.BEST}, {folder.REPORT}{wandb})")
    lines.append(f"space: {space.source}" + (f": {space.description}" if space.description else ""))
    lines.append(f"searched keys ({len(space.search)}):")
    width = max(len(key) for key in space.search)
    lines += [f"  {key.ljust(width)}  {distribution_text(dist)}" for key, dist in space.search.items()]
    objectives = ", ".join(f"{m} ({mode})" for m, mode in zip(plan.metrics, plan.modes))
    on_test = " (selected on test)" if plan.selected_on_test else ""
    lines.append(f"trials: {plan.trials_text()}, proposed by Optuna's TPE (sweep.seed={cfg.sweep.seed}); "
                 f"objectives {objectives}{on_test}; scheduler {plan.scheduler}")
    note = random_search_note(plan.num_samples)
    lines += [note] if note else []
    lines.append(plan.confirmation_text())
    lines.append("seeds: the space searches seed" if plan.seeds is None else
                 f"seeds: every trial runs {argument_value(plan.seeds)}"
                 + (" (rows hold mean ± std)" if len(plan.seeds) > 1 else ""))
    where = (f"joins ray.address={cfg.ray.address or '$RAY_ADDRESS'}" if joins_cluster(cfg)
             else "a local Ray on 127.0.0.1")
    lines.append(f"resources: trial.cpu={cfg.trial.cpu}, trial.gpu={cfg.trial.gpu} per trial, training on "
                 f"{plan.device}; {where}; {concurrency_text(plan)}")
    fixed = {key: value for key, value in flatten(plan.run_settings()).items()
             if key not in space.search and key not in ("seed", "seeds")}
    lines += ["fixed settings (every trial):", *_settings(fixed)]
    chosen = {"sweep.name": plan.name, "sweep.num_samples": plan.num_samples, "sweep.scheduler": plan.scheduler,
              "sweep.metric": plan.metrics if len(plan.metrics) > 1 else plan.metrics[0],
              "sweep.mode": plan.modes if len(plan.modes) > 1 else plan.modes[0]}
    running = {key: chosen.get(key, value) for key, value in flatten(resolved(cfg)).items()
               if key.split(".")[0] in SWEEP_GROUPS}
    lines += ["sweep settings:", *_settings({**running, "output_dir": cfg.output_dir})]
    return "\n".join(lines)
