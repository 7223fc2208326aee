"""Ray and the Tuner: start or join Ray, load each task stream once, run the trials Optuna proposes, and
write the results; ``run_sweep`` is the one entry point."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import optuna
import pyarrow as pa
import ray
import torch
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from .. import environment, results
from ..environment import TUNE_SETTINGS
from ..benchmarks import stream_for
from ..config import UserError, first_line, joins_cluster
from ..data import TaskStream
from . import dashboards
from .callbacks import ProgressLines, ResultsTable
from .code import check_models_fit, shipped_modules
from .plan import SweepPlan, machine_cpus, stream_variants, write_plan
from .preview import trials_at_once
from .progress import EpochSender, LiveProgress, epoch_sender
from .study import FinalMetricsOptunaSearch, sqlite_storage
from .trial import run_trial


def make_searcher(plan: SweepPlan, database: Optional[str] = None) -> FinalMetricsOptunaSearch:
    """Optuna's TPE over the space, seeded by sweep.seed: the same command proposes the same configurations.
    The study, named after the sweep, lives in the SQLite file ``database`` (``optuna.db``); None: in memory."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    multi = len(plan.metrics) > 1
    searcher = FinalMetricsOptunaSearch(
        space={key: dist.to_optuna() for key, dist in plan.space.search.items()},
        metric=plan.metrics if multi else plan.metrics[0],
        mode=plan.modes if multi else plan.modes[0],
        seed=plan.cfg.sweep.seed, study_name=plan.name,
        storage=sqlite_storage(database) if database else None)
    searcher.database = database
    return searcher


def make_scheduler(plan: SweepPlan, num_tasks: int):
    """ASHA on the per-task ``acc_seen``; its first rung after the second task, the first the null space shapes."""
    if plan.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="task", metric="acc_seen", mode="max", max_t=num_tasks,
                         grace_period=min(2, num_tasks), reduction_factor=2)


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
    concurrency: int


def run_sweep(plan: SweepPlan, out: Callable[[str], None] = print) -> SweepOutcome:
    """Run the planned sweep; returns the results table as written to ``results.parquet``."""
    started = time.perf_counter()
    if plan.cfg.wandb.mode != "disabled":
        threading.Thread(target=_import_wandb, daemon=True).start()  # ~1 s, overlapping Ray's start
    streams = load_streams(plan)
    num_tasks = max(len(stream.tasks) for stream in streams.values())
    folder = plan.folder
    connected = connect_ray(plan, shipped_modules(plan.cfg, plan.space.search, streams.values()))
    try:
        if not plan.cfg.resume:
            folder.filesystem.create_dir(folder.path(), recursive=True)
            write_plan(plan)
        parallel = concurrency(plan)
        out(f"sweep {plan.name}: {plan.num_samples} trials of {plan.space.source}, {parallel} at a time, "
            f"{', '.join(f'{m} ({mode})' for m, mode in zip(plan.metrics, plan.modes))}, scheduler {plan.scheduler}, "
            f"{_benchmarks(streams)} on {plan.device}; results in {plan.sweep_dir}")
        refs = {key: ray.put(stream) for key, stream in streams.items()}
        # W&B and SQLite write local files only: for a URI output_dir both are staged here and copied there
        with folder.staged_locally(folder.WANDB, fetch=False) as wandb_dir, \
                folder.staged_locally(folder.OPTUNA, fetch=True) as study_file, _quiet_tune_errors(), \
                environment.scoped(TUNE_SETTINGS), epoch_sender(plan) as sender:
            callbacks = [ProgressLines(plan, num_tasks, out), LiveProgress(plan, num_tasks, parallel, out, sender),
                         ResultsTable(plan), JsonLoggerCallback()]  # Tune's result.json: Ray's readers work
            if plan.cfg.wandb.mode != "disabled":
                callbacks.append(dashboards.WandbRuns(plan, os.path.dirname(wandb_dir)))  # W&B adds wandb/  # after ResultsTable: reads its table
            _tuner(plan, refs, num_tasks, parallel, callbacks, study_file, sender).fit()
    finally:
        if connected:
            ray.shutdown()
    table = results.read_table(plan.sweep_dir)
    return SweepOutcome(table, plan.sweep_dir, time.perf_counter() - started, parallel)


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
           study_file: str, sender: Optional[EpochSender] = None) -> tune.Tuner:
    trial, folder = plan.cfg.trial, plan.folder
    fs, root = folder.filesystem, folder.path().rpartition("/")[0]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, streams=streams, settings=plan.run_settings(), seeds=plan.seeds,
                             progress=sender),
        {"cpu": trial.cpu, "gpu": trial.gpu})
    failures = tune.FailureConfig(max_failures=trial.max_failures)
    if plan.cfg.resume:
        tuner = tune.Tuner.restore(folder.path(), trainable, resume_errored=True, storage_filesystem=fs)
        # Tune restores the callbacks and limits pickled when the sweep started; this run's own (a new W&B
        # folder, the settings a resume may change) replace them.
        internal = tuner._local_tuner
        if internal is not None:
            internal.get_run_config().callbacks = callbacks
            internal.get_run_config().failure_config = failures
            internal._tune_config.max_concurrent_trials = parallel
            internal._tune_config.search_alg.database = study_file  # this run's copy of optuna.db
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=make_searcher(plan, study_file),
                                    scheduler=make_scheduler(plan, num_tasks),
                                    num_samples=plan.num_samples, max_concurrent_trials=parallel, reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=plan.name, storage_path=root, storage_filesystem=fs, verbose=0, callbacks=callbacks,
            failure_config=failures, checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


def _trial_dirname(trial) -> str:
    return trial.trial_id
