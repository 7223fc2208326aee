"""One sweep, from settings to results: the Python API (``ness_sweep.sweep(...)``) and the command's core."""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import pyarrow as pa

from .. import environment
from ..config import SweepConfig, arguments, parse_overrides
from ..results import Status, SweepFolder, WriteFailed
from ..selection import Confirmed


@dataclass
class SweepResult:
    """What a sweep leaves: its table, its folder, and its choice: the confirmed winner (``confirmed`` holds its
    reruns on fresh seeds), or without a confirmation the best search trial (the first of a Pareto front)."""

    table: pa.Table
    folder: SweepFolder
    seconds: float
    concurrency: int
    best: Optional[Dict[str, Any]]  # the chosen search row, None when no trial finished
    best_config: Optional[Dict[str, Any]]  # the best trial's run settings (dotted keys), as best.yaml holds them
    best_yaml: Optional[str]  # where best.yaml was written
    unfinished: int  # trials neither finished nor stopped: resume=true continues them
    upload_hint: Optional[str]  # how to upload offline W&B runs
    report_html: Optional[str] = None  # where report.html was written; None when it could not be (one warning line)
    confirmed: Optional[Confirmed] = None  # the winner's confirmation: its headline is confirmed.mean_std("acc")

    def to_pandas(self):
        return self.table.to_pandas()

    @property
    def all_failed(self) -> bool:
        """Every trial raised (status ERROR; each row's ``error`` says why): the sweep measured nothing, and the
        command exits 1."""
        statuses = self.table.column("status").to_pylist()
        return bool(statuses) and all(status == Status.ERROR for status in statuses)


def sweep(*args: str, out: Callable[[str], None] = print, **settings: Any) -> Optional[SweepResult]:
    """Run a sweep with the command line's settings: ``key=value`` strings, keyword arguments, or both
    (``sweep("space=smoke", train={"epochs": 1})``; dotted keys as ``**{"train.lr": 0.1}``). Bad input raises
    ``UserError`` before Ray starts or anything is created. Uses a Ray already running in the process.
    ``dry_run=true`` prints the resolved plan through ``out`` and returns None, starting and creating nothing.

    A sweep whose every trial raised returns as any other, with ``all_failed`` true. Another driver running the
    same sweep folder is refused (``UserError`` naming its host and PID). A file of the folder that cannot be
    written (disk full, a folder in the way) stops the sweep with ``results.WriteFailed``, a ``UserError`` naming
    the file and the command that continues the sweep; no trial is marked failed for it."""
    argv = [*args, *arguments(settings, args)]
    environment.bind_ray_to_loopback(parse_overrides(argv).get("ray", {}).get("address"))
    from ..leaderboard import chosen, row_settings
    from ..report import write_best_config, write_report_page
    from .plan import build_plan

    plan = build_plan(argv)
    if plan.cfg.dry_run:
        from .preview import describe

        out(describe(plan))
        return None
    from .dashboards import check_login, sync_hint  # Ray and W&B load only for a sweep that runs
    from .tuner import run_sweep

    check_login(plan.cfg)
    with contextlib.ExitStack() as held:  # the folder stays this driver's until its last file is written
        try:
            outcome = run_sweep(plan, out, held)
            best_yaml = write_best_config(outcome.table, outcome.sweep_dir)
        except WriteFailed as error:
            if not plan.folder.exists(plan.folder.PLAN):
                raise  # the sweep had not started: nothing to continue
            raise WriteFailed(f"{error}; the sweep stopped there, no trial failed: fix that, then continue with: "
                              f"{shlex.join(resume_command(plan.folder))}") from None
        report_html = write_report_page(outcome.sweep_dir, out)
    best, confirmed = chosen(outcome.table)
    statuses = outcome.table.column("status").to_pylist()
    settings = row_settings(best, outcome.table, confirmed.seeds if confirmed else None) if best else None
    return SweepResult(outcome.table, plan.folder, outcome.seconds, outcome.concurrency, best, settings, best_yaml,
                       sum(status not in Status.ENDED for status in statuses), sync_hint(plan.cfg, outcome.sweep_dir),
                       report_html, confirmed)


def resume_command(folder: SweepFolder) -> List[str]:
    """The command that continues an interrupted sweep: its name (and folder) alone, the plan is stored."""
    where = [f"output_dir={folder.output_dir}"] if folder.output_dir != SweepConfig.output_dir else []
    return ["python", "-m", "ness_sweep.run", f"sweep.name={folder.name}", *where, "resume=true"]
