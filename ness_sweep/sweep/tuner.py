"""Ray and the Tuner: start or join Ray, load each task stream once, run the trials Optuna proposes, and
write the results; ``run_sweep`` is the one entry point."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import pyarrow as pa
import ray
import torch
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from .. import environment, results
from ..benchmarks import stream_for
from ..config import UserError, first_line, joins_cluster
from ..data import TaskStream
from ..environment import TUNE_SETTINGS
from ..results import Stage
from . import dashboards
from .callbacks import FailedWrites, ProgressLines, ResultsTable
from .checkpoints import Checkpoints
from .code import check_models_fit, shipped_modules
from .confirm import CONFIRM_DIR, FixedConfigs, confirmation_configs, nothing_left, search_complete
from .lock import claimed
from .plan import SweepPlan, stream_variants, streams_of, write_plan
from .preflight import machine_cpus, trials_at_once
from .progress import EpochSender, LiveProgress, epoch_sender
from .study import (
    STORAGE_ERRORS,
    PerMethodSearch,
    StudySearch,
    check_resumable_study,
    settle_study,
    storage_failure,
)
from .trial import run_trial
from .tune_internals import replace_run_settings


def make_searcher(plan: SweepPlan, journal: Optional[str] = None, failed_writes: Optional[FailedWrites] = None):
    """Optuna's TPE over the space, seeded by sweep.seed: the same command proposes the same configurations
    when trials run one at a time (with several at once, the order they end in may differ). The study, named
    after the sweep, lives in the journal file ``journal`` (``optuna.journal``); None: in memory. A space searching
    ``method`` gets one study per method, ``SWEEP/METHOD`` (``PerMethodSearch``). A write of the study that
    fails goes to ``failed_writes`` once Tune runs."""
    if not plan.by_method:
        searcher = StudySearch(plan, plan.space.search)
    else:
        methods = [str(method) for method in plan.space.search["method"].values]
        searcher = PerMethodSearch(plan, {m: StudySearch(plan, plan.method_space(m), m) for m in methods})
    searcher.attach(plan, journal, failed_writes)
    try:
        searcher.open()  # optuna.journal exists from the start
    except STORAGE_ERRORS as error:  # before Tune runs: the sweep stops at once
        raise storage_failure(journal, error) from None
    return searcher


ASHA_GRACE_TASKS = 2  # ASHA's first rung: after the second task, the first that a method's protection shapes


def asha_scheduler(signal: str, num_tasks: int, grace: int = ASHA_GRACE_TASKS) -> ASHAScheduler:
    """ASHA on a per-task signal (``plan.signal``: ``valid_acc_seen``), rungs at ``grace`` tasks and doubling;
    perf/asha.py replays sweeps through it to choose ``grace``."""
    return ASHAScheduler(time_attr="task", metric=signal, mode="max", max_t=num_tasks,
                         grace_period=min(grace, num_tasks), reduction_factor=2)


def make_scheduler(plan: SweepPlan, num_tasks: int):
    """fifo, or ASHA on the sweep's per-task signal."""
    return FIFOScheduler() if plan.scheduler == "fifo" else asha_scheduler(plan.signal, num_tasks)


def connect_ray(plan: SweepPlan, modules: Sequence[str] = ()) -> bool:
    """Join ``ray.address`` (or RAY_ADDRESS), or start a local Ray on loopback sized to the trials.

    ``modules``: the user's own modules the trials import (``code.shipped_modules``), shipped to every node
    through the job's ``runtime_env`` (``py_modules``). Returns whether this call connected (and so should
    disconnect); a Ray already running in this process (a notebook, the tests) is used as it is, and its
    workers import what its own ``runtime_env`` and working directory give them.
    """
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": "ERROR"}
    if modules:
        quiet["runtime_env"] = {"py_modules": list(modules)}
    if joins_cluster(plan.cfg):
        address = plan.cfg.ray.address or os.environ["RAY_ADDRESS"]
        try:
            ray.init(address=address, **quiet)
        except ray.exceptions.AuthenticationError as error:  # RAY_AUTH_MODE=token but no token here
            raise UserError(f"ray.address={address}: {first_line(error)}") from None
        except ConnectionError as error:  # nothing there, or a token-auth cluster and no (or another) token here
            raise UserError(f"ray.address={address}: {first_line(error)}; a cluster with token authentication "
                              "needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token)") from None
        return True
    trial = plan.cfg.trial
    cpus = machine_cpus()
    if plan.cfg.sweep.max_concurrent:
        cpus = min(cpus, max(1, math.ceil(plan.cfg.sweep.max_concurrent * trial.cpu)))
    gpus = torch.cuda.device_count() if trial.gpu > 0 else 0
    # address="local": a new Ray even when `ray start` left one running on this machine
    ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, **quiet)
    return True


def concurrency(plan: SweepPlan) -> int:
    """Trials at once: what the Ray cluster's CPUs and GPUs hold, capped by sweep.max_concurrent.

    On a cluster sweep.max_concurrent decides alone: an autoscaler adds nodes for waiting trials, so
    what is up when the sweep starts says nothing of what it will have.
    """
    if joins_cluster(plan.cfg) and plan.cfg.sweep.max_concurrent:
        return plan.cfg.sweep.max_concurrent
    available = ray.cluster_resources()
    return trials_at_once(available.get("CPU", 1), available.get("GPU", 0), plan.cfg.trial,
                          plan.cfg.sweep.max_concurrent)


def load_streams(plan: SweepPlan) -> Dict[str, TaskStream]:
    """Each distinct task stream of the sweep, loaded once in the driver, keyed by ``stream_key``; every
    model the sweep may build is tried on each (``code.check_models_fit``) before Ray starts."""
    variants = stream_variants(plan)
    streams = {key: stream_for(cfg, seed) for key, (cfg, seed) in variants.items()}
    check_models_fit([(cfg, streams[key]) for key, (cfg, _) in variants.items()], plan.space.search)
    return streams


@dataclass
class SweepOutcome:
    table: pa.Table
    sweep_dir: str
    seconds: float
    concurrency: int  # trials at once; 0: a resume found nothing left to run


def run_sweep(plan: SweepPlan, out: Callable[[str], None] = print,
              held: Optional[contextlib.ExitStack] = None) -> SweepOutcome:
    """Run the planned sweep, the search and then its confirmation; returns the results table as written to
    ``results.parquet``. The sweep folder is this driver's alone (``lock.claimed``) until ``held`` closes, when
    given (the caller writes more files into the folder), else until this returns. A file of the folder that
    cannot be written stops the sweep with ``results.WriteFailed`` (``FailedWrites``), resumable."""
    if held is None:
        with contextlib.ExitStack() as held:
            return run_sweep(plan, out, held)
    started = time.perf_counter()
    if plan.cfg.resume:
        check_resumable_study(plan, out)  # before Ray starts: a study that cannot be continued is refused
        if plan.folder.exists(plan.folder.TABLE) and nothing_left(plan, results.read_table(plan.sweep_dir)):
            held.enter_context(claimed(plan, out))
            table = results.fold_rows(plan.sweep_dir)
            out(f"sweep {plan.name}: nothing left to run, all {table.num_rows} trials ended; Ray not started")
            return SweepOutcome(table, plan.sweep_dir, time.perf_counter() - started, 0)
    if plan.cfg.wandb.mode != "disabled":
        threading.Thread(target=_import_wandb, daemon=True).start()  # ~1 s, overlapping Ray's start
    streams = load_streams(plan)
    num_tasks = max(len(stream.tasks) for stream in streams.values())
    connected = connect_ray(plan, shipped_modules(plan.cfg, plan.space.search, streams.values()))
    try:
        held.enter_context(claimed(plan, out))  # an automatic name taken meanwhile: plan.name moves on
        folder = plan.folder
        if not plan.cfg.resume:
            write_plan(plan)
        parallel = concurrency(plan)
        out(f"sweep {plan.name}: {plan.trials_text()} of {plan.space.source}, {parallel} at a time, "
            f"selecting on {', '.join(f'{m} ({mode})' for m, mode in zip(plan.metrics, plan.modes))}"
            f"{' (selected on test)' if plan.selected_on_test else ''}, scheduler {plan.scheduler}, "
            f"{_benchmarks(streams)} on {plan.device}; results in {plan.sweep_dir}")
        refs = {key: ray.put(stream) for key, stream in streams.items()}
        # W&B and Optuna's journal write local files only: for a URI output_dir both are staged here and copied there
        with folder.staged_locally(folder.WANDB, fetch=False) as wandb_dir, \
                folder.staged_locally(folder.OPTUNA, fetch=True) as study_file, _quiet_tune_errors(), \
                environment.scoped(TUNE_SETTINGS), epoch_sender(plan) as sender:
            stage = StageRun(plan, num_tasks, parallel, out, sender, os.path.dirname(wandb_dir))
            stage.fit(_tuner(plan, refs, num_tasks, parallel, stage.callbacks(Stage.SEARCH), study_file,
                             stage.failed_writes, sender))
            settle_study(plan, study_file, results.read_table(plan.sweep_dir).to_pylist(), out)
            del refs
            if plan.cfg.sweep.confirm_top:
                _confirm(plan, stage)
    finally:
        if connected:
            ray.shutdown()
    table = results.read_table(plan.sweep_dir)
    return SweepOutcome(table, plan.sweep_dir, time.perf_counter() - started, parallel)


@dataclass
class StageRun:
    """What both stages' Tune runs share: the trials' task count, concurrency, output, epoch board, W&B folder."""

    plan: SweepPlan
    num_tasks: int
    parallel: int
    out: Callable[[str], None]
    sender: Optional[EpochSender]
    wandb_dir: str
    failed_writes: FailedWrites = dataclasses.field(default_factory=FailedWrites)

    def callbacks(self, stage: str, total: Optional[int] = None) -> list:
        plan = self.plan
        callbacks = [ProgressLines(plan, self.num_tasks, self.out, total),
                     LiveProgress(plan, self.num_tasks, self.parallel, self.out, self.sender, total),
                     ResultsTable(plan, stage, self.failed_writes), Checkpoints(plan),
                     JsonLoggerCallback()]  # Tune's result.json: Ray's readers work
        if plan.cfg.wandb.mode != "disabled":
            callbacks.append(dashboards.WandbRuns(plan, self.wandb_dir))  # after ResultsTable: reads its table
        return callbacks + [self.failed_writes]  # last: ends the run once the others have had their say

    def fit(self, tuner: tune.Tuner) -> None:
        """Run one stage; a driver-side write that failed ends it with that failure, whatever Tune's cleanup
        raised after it."""
        try:
            tuner.fit()
        except Exception:
            self.failed_writes.raise_first()
            raise


def _confirm(plan: SweepPlan, stage: StageRun) -> None:
    """Rerun the search's best configurations on fresh seeds, once the search has ended (a resume finishes an
    unfinished confirmation and reruns no confirmed row: its Tune experiment continues)."""
    table = results.read_table(plan.sweep_dir)
    if not search_complete(plan, table):
        return  # interrupted: the driver reports the unfinished trials, and resume=true continues
    configs = confirmation_configs(plan, table)
    if not configs:
        stage.out("confirmation: no search trial finished every task; nothing to confirm")
        return
    refs = {key: ray.put(stream_for(cfg, seed)) for key, (cfg, seed) in streams_of(plan, configs).items()}
    per_method = " per method" if plan.by_method else ""
    stage.out(f"confirmation: the best {plan.cfg.sweep.confirm_top}{per_method} by {plan.metrics[0]}, "
              f"{len(configs) // len(plan.confirm_seeds)} configurations, each on fresh seeds "
              f"{', '.join(map(str, plan.confirm_seeds))}: {len(configs)} trials")
    folder, trial = plan.folder, plan.cfg.trial
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, streams=refs, settings=plan.run_settings(), seeds=None,
                             experiment=(folder.filesystem, folder.path(CONFIRM_DIR)), progress=stage.sender),
        {"cpu": trial.cpu, "gpu": trial.gpu})
    callbacks = stage.callbacks(Stage.CONFIRM, len(configs))
    path = folder.path(CONFIRM_DIR)
    if tune.Tuner.can_restore(path, storage_filesystem=folder.filesystem):
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=folder.filesystem)
        replace_run_settings(tuner, callbacks, tune.FailureConfig(max_failures=trial.max_failures), stage.parallel)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=FixedConfigs(configs), num_samples=len(configs),
                                        max_concurrent_trials=stage.parallel, reuse_actors=True,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=CONFIRM_DIR, storage_path=folder.path(), storage_filesystem=folder.filesystem, verbose=0,
                callbacks=callbacks, failure_config=tune.FailureConfig(max_failures=trial.max_failures)))
    stage.fit(tuner)


def _benchmarks(streams: Dict[str, TaskStream]) -> str:
    return ", ".join(sorted({stream.name for stream in streams.values()}))


@contextlib.contextmanager
def _quiet_tune_errors():
    """Tune logs a failed trial's whole traceback (about 40 lines); the sweep prints one line of its own
    and keeps the whole text in the row's ``error`` column, so Tune's own error log is muted meanwhile."""
    logger = logging.getLogger("ray.tune")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _import_wandb() -> None:
    import wandb

    wandb.setup()


def _tuner(plan: SweepPlan, streams: Dict[str, Any], num_tasks: int, parallel: int, callbacks,
           study_file: str, failed_writes: FailedWrites, sender: Optional[EpochSender] = None) -> tune.Tuner:
    trial, folder = plan.cfg.trial, plan.folder
    fs, root = folder.filesystem, folder.path().rpartition("/")[0]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, streams=streams, settings=plan.run_settings(), seeds=plan.seeds,
                             experiment=(fs, folder.path()), progress=sender),
        {"cpu": trial.cpu, "gpu": trial.gpu})
    failures = tune.FailureConfig(max_failures=trial.max_failures)
    if plan.cfg.resume:
        tuner = tune.Tuner.restore(folder.path(), trainable, resume_errored=True, storage_filesystem=fs)
        search = replace_run_settings(tuner, callbacks, failures, parallel)
        if search is not None:
            search.attach(plan, study_file, failed_writes)  # this run's copy of optuna.journal
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=make_searcher(plan, study_file, failed_writes),
                                    scheduler=make_scheduler(plan, num_tasks),
                                    num_samples=plan.total_trials, max_concurrent_trials=parallel, reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=plan.name, storage_path=root, storage_filesystem=fs, verbose=0, callbacks=callbacks,
            failure_config=failures))


def _trial_dirname(trial) -> str:
    return trial.trial_id
