"""W&B dashboards of a sweep: one W&B run per trial, and one sweep-level run holding the results table.

Everything is logged from the driver by a Tune callback: the whole sweep talks to one W&B service
(tens of milliseconds a trial), and trials on other machines need neither wandb nor a key. Offline
runs land in ``<sweep dir>/wandb``; ``sync_hint`` names the one command that uploads them.
"""

from __future__ import annotations

import hashlib
import netrc
import os
import shlex
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
from omegaconf import DictConfig
from ray import tune

from .. import environment, results
from ..config import UserError, resolved
from ..metrics import FINAL, TEST, VALID, on_split
from ..results import Status
from ..selection import HEADLINE_METRICS, Confirmed, MethodLine, per_method, winner
from .callbacks import trial_status
from .plan import trial_run_config

# The trial's final report, kept in its run summary (the *_std only come with several seeds).
SUMMARY_KEYS = (*(on_split(m, split) + std for split in (TEST, VALID) for m in FINAL for std in ("", "_std")),
                "trainable_params", "seconds")
# Per-task charts, all against the number of tasks finished.
PER_TASK_KEYS = ("acc_seen", "valid_acc_seen", "acc_task/*", "valid_acc_task/*", "diagnostics/*")
# What the sweep-level table holds besides the config columns: enough for ACC-against-BWT views.
TABLE_METRICS = ("stage", "confirms", *FINAL, *(on_split(m, VALID) for m in FINAL), "seconds")
SUMMARY_JOB_TYPE = "sweep-summary"


def check_login(cfg: DictConfig) -> None:
    """``wandb.mode=online`` without credentials would fail in the middle of the sweep: say so before any work.

    Looks where wandb does (WANDB_API_KEY or an identity token, its settings files, the .netrc that
    ``wandb login`` writes) without asking the server: ``wandb.login`` would, and wait on the network.
    """
    if cfg.wandb.mode != "online":
        return
    import wandb

    settings = wandb.setup().settings
    if not (settings.api_key or settings.identity_token_file or _netrc_has(settings.base_url)):
        raise UserError("wandb.mode=online: no W&B API key found; set WANDB_API_KEY or run `wandb login`, "
                          "or keep wandb.mode=offline and upload the runs later with `wandb sync`")


def _netrc_has(url: str) -> bool:
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(urlparse(url).hostname) is not None
    except FileNotFoundError:
        return False
    except (netrc.NetrcParseError, OSError):
        return True  # unreadable here: let wandb judge it


def sync_hint(cfg: DictConfig, sweep_dir: str) -> Optional[str]:
    """The line telling how to upload a sweep's offline runs: ``wandb sync`` given a wandb folder syncs every
    run in it."""
    if cfg.wandb.mode != "offline":
        return None
    fs, path = results.filesystem_and_path(sweep_dir)
    if not isinstance(fs, pafs.LocalFileSystem):
        return (f"W&B offline runs are in {sweep_dir}/wandb; copy that folder to a machine with network "
                "access and run: wandb sync FOLDER")
    return f"upload the W&B offline runs with: {shlex.join(['wandb', 'sync', f'{path}/wandb'])}"


def matrix_columns(size: int) -> List[str]:
    return ["after_task", *(f"task_{j + 1}" for j in range(size))]


def artifacts_staged_in(directory: str):
    """W&B copies every logged table into a staging folder that ``wandb sync`` uploads later; by default that
    folder is in the home directory. Staging beside the runs keeps a sweep's W&B data in one place."""
    return environment.scoped({"WANDB_DATA_DIR": directory})


def run_id(sweep_name: str, key: str) -> str:
    """A W&B run id that is the same in every driver of one sweep: a resumed trial continues its own run.
    Ids are unique per project, so the sweep's name (hashed: ids allow few characters) is part of it."""
    return f"{key}-{hashlib.sha1(sweep_name.encode()).hexdigest()[:10]}"


def task_entries(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The per-task entries (``trial.task_history``) a trial's report holds, from task 1: its last report carries
    the whole history; any other, its own task's entry, the tasks before it with their learning curves alone
    (``acc_seen_per_task``, ``valid_acc_seen_per_task``). A diverged trial's report holds none."""
    if "history" in result:
        return result["history"]
    if "acc_row" not in result:
        return []
    curves = {seen: result.get(f"{seen}_per_task") or [] for seen in (on_split("acc_seen", s) for s in (TEST, VALID))}
    earlier = [{"task": k + 1, **{seen: curve[k] for seen, curve in curves.items()}} for k in range(result["task"] - 1)]
    return [*earlier, result]


class WandbRuns(tune.Callback):
    """One W&B run per trial in the sweep's group, and one ``<sweep>-summary`` run at the end.

    A trial's run holds its full resolved config; after each task ``task``, ``acc_seen``, each seen task's
    accuracy (``acc_task/N``) and the method's diagnostics (``diagnostics/KEY``: NESS's ``rank/LAYER``, the
    rank chosen per layer); at the end the summary holds
    the final metrics, the accuracy matrix as a table and as a heatmap. The summary run holds the results
    table, read from ``results.parquet``: list this callback after ``ResultsTable``, which writes it when
    the experiment ends.

    Across a kill and ``resume=true`` every run keeps its id. Offline, a run that a killed driver left open
    holds only the tasks before the kill (or nothing): it is removed, and the resumed trial's run is
    written anew from task 1 (``task_entries``: earlier tasks' curves from each report, their accuracy rows and
    diagnostics from the last report's history). Online, W&B resumes the run on its server and only the tasks it
    lacks are logged.
    """

    def __init__(self, plan, directory: str):
        self.plan, self.directory = plan, directory
        self.runs: Dict[str, Any] = {}
        self.logged: Dict[str, int] = {}  # trial id -> tasks its run holds

    @property
    def _wandb_dir(self) -> str:
        """The folder W&B makes in ``directory``: its runs, and the tables they stage for upload."""
        return os.path.join(self.directory, "wandb")

    def setup(self, **info):
        import wandb

        self.wandb = wandb
        self.settings = wandb.Settings(silent=True, console="off", x_save_requirements=False, x_disable_stats=True,
                                       x_disable_machine_info=True, disable_git=True, disable_code=True)

    def _init(self, key: str, name: str, config: Dict[str, Any], job_type: Optional[str] = None):
        cfg = self.plan.cfg
        run_key = run_id(self.plan.name, key)
        if cfg.wandb.mode == "offline":
            for stale in Path(self._wandb_dir).glob(f"offline-run-*-{run_key}"):
                shutil.rmtree(stale)  # a killed driver's partial copy of this run: written anew below
        return self.wandb.init(
            mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
            group=cfg.wandb.group or self.plan.name, name=name, job_type=job_type, dir=self.directory,
            config=config, id=run_key, resume="allow" if cfg.wandb.mode == "online" else None,
            reinit="create_new", settings=self.settings)

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:
            return
        cfg = trial_run_config(self.plan.run_settings(), trial.config)
        config = resolved(cfg)
        config["seeds"] = self.plan.trial_seeds(cfg, trial.config)
        run = self._init(trial.trial_id, trial.trial_id, config)
        for key in PER_TASK_KEYS:
            run.define_metric(key, step_metric="task")
        self.runs[trial.trial_id] = run
        self.logged[trial.trial_id] = int(run.summary.get("task", 0) or 0)  # > 0 only for a resumed online run

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run = self.runs.get(trial.trial_id)
        if run is None:
            return
        for entry in task_entries(result):
            if entry["task"] <= self.logged[trial.trial_id]:
                continue
            logged = {"task": entry["task"]}
            for split in (TEST, VALID):
                logged[on_split("acc_seen", split)] = entry[on_split("acc_seen", split)]
                logged.update({f"{on_split('acc_task', split)}/{j + 1}": acc
                               for j, acc in enumerate(entry.get(on_split("acc_row", split), []))})
            logged.update({f"diagnostics/{key}": value for key, value in entry.get("task_diagnostics", {}).items()})
            run.log(logged)
            self.logged[trial.trial_id] = entry["task"]

    def _finish(self, trial, status: str) -> None:
        run = self.runs.pop(trial.trial_id, None)
        if run is None:
            return
        result = trial.last_result or {}
        summary: Dict[str, Any] = {key: result[key] for key in SUMMARY_KEYS if key in result}
        summary["status"] = status
        matrix = result.get("acc_matrix")
        if matrix:
            summary["acc_matrix"] = self.wandb.Table(
                columns=matrix_columns(len(matrix)), data=[[i + 1, *row] for i, row in enumerate(matrix)])
            from ..plots import acc_matrix_figure  # plotly loads with the first trial that ends

            summary["acc_matrix_heatmap"] = self.wandb.Plotly(
                acc_matrix_figure(matrix, f"Accuracy matrix ({trial.trial_id})"))
        with artifacts_staged_in(self._wandb_dir):
            run.summary.update(summary)
        run.finish()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, trial_status(trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, Status.ERROR)

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            self._finish(trial, Status.UNFINISHED)
        try:
            table = results.read_table(self.plan.sweep_dir)
        except (OSError, UserError):  # the driver could not write it, and stops the sweep saying so
            return
        recorded = table.column("trial_id").to_pylist()  # the other stage's too
        self.remove_orphans({trial.trial_id for trial in trials} | set(recorded))
        self.log_results_table(table)

    def remove_orphans(self, trial_ids) -> None:
        """Offline runs of trials that Tune no longer knows: a driver killed before Tune saved its state
        forgets the trials it had just started, and their runs would upload as fragments."""
        if self.plan.cfg.wandb.mode != "offline":
            return
        suffix = run_id(self.plan.name, "")
        keep = {run_id(self.plan.name, key) for key in [*trial_ids, "summary"]}
        for folder in Path(self._wandb_dir).glob(f"offline-run-*{suffix}"):
            if not any(folder.name.endswith(f"-{key}") for key in keep):
                shutil.rmtree(folder)

    def log_results_table(self, table: pa.Table) -> None:
        """The sweep-level run: every trial's config columns, status and final metrics in one table,
        with ACC against BWT as a scatter plot."""
        meta = results.sweep_metadata(table)
        columns = ["trial_id", "status", *meta["config_columns"], *TABLE_METRICS]
        rows = [[row[c] for c in columns] for row in table.to_pylist()]
        config = {key: meta[key] for key in ("space", "metrics", "modes", "searched", "selected_on")}
        run = self._init("summary", f"{self.plan.name}-summary", {**config, "trials": len(rows)},
                         job_type=SUMMARY_JOB_TYPE)
        wandb_table = self.wandb.Table(columns=columns, data=rows)
        logged = {"results": wandb_table,
                  "acc_vs_bwt": self.wandb.plot.scatter(wandb_table, "bwt", "acc", title="ACC against BWT")}
        everything = table.to_pylist()
        if meta.get("by_method"):
            logged["methods"] = self.wandb.Table(columns=list(METHOD_COLUMNS), data=[
                method_cells(line, meta["metrics"][0])
                for line in per_method(everything, meta["metrics"], meta["modes"])])
        with artifacts_staged_in(self._wandb_dir):
            run.log(logged)
            run.summary.update(headline_summary(winner(everything, meta["metrics"], meta["modes"]), meta))
        run.finish()


METHOD_COLUMNS = ("method", "trials", "valid_confirmed", "acc", "acc_std", "bwt", "bwt_std", "seconds_per_run",
                  "trial_id")


def method_cells(line: MethodLine, objective: str) -> List[Any]:
    """One row of the summary run's per-method table: confirmed means and stds (None where nothing finished)."""
    confirmed = line.confirmed
    values = [confirmed.mean_std(m) if confirmed else None for m in (objective, "acc", "bwt")]
    return [line.method, line.trials, values[0][0] if values[0] else None,
            *(x for value in values[1:] for x in (value or (None, None))),
            confirmed.seconds if confirmed else None, confirmed.row["trial_id"] if confirmed else None]


def headline_summary(confirmed: Optional[Confirmed], meta: Dict[str, Any]) -> Dict[str, Any]:
    """The sweep's headline in the summary run: the winner's confirmed test numbers (mean, std) beside the
    search's, and whether the sweep selected on test."""
    on_test = meta.get("selected_on") == TEST
    summary: Dict[str, Any] = {"selected_on": meta.get("selected_on"),
                               "selection": "selected on test" if on_test else "selected on validation"}
    if confirmed is None:
        return summary
    summary.update(winner=confirmed.row["trial_id"], confirm_seeds=confirmed.seeds)
    for metric in dict.fromkeys([meta["metrics"][0], *HEADLINE_METRICS]):
        value = confirmed.mean_std(metric)
        if value is not None:
            summary[f"confirmed/{metric}"], summary[f"confirmed/{metric}_std"] = value
        summary[f"search/{metric}"] = confirmed.row.get(metric)
    return summary
