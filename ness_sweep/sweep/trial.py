"""The worker side of a sweep: one Tune trial trains its configuration through its own task stream on each
seed, reports after every task and checkpoints there."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import ray
import torch
from omegaconf import DictConfig
from ray import tune

from ..benchmarks import check_stream, stream_settings
from ..data import TaskStream
from ..methods import make_trainer
from ..metrics import FINAL, TEST, VALID, mean_std, on_split, seen_accuracy
from ..trainer import global_rng_state, set_global_rng_state
from .checkpoints import TrialFolder, load_checkpoint, report_with_checkpoint
from .plan import stream_key, trial_run_config
from .progress import EpochSender


class SeedTrainer:
    """One seed's Trainer, advanced one task per ``step`` so that a trial's seeds move in lock step.

    Each seed keeps its own global RNG state between steps: interleaving seeds gives the same numbers
    as running them one after another, as ``ness_sweep.train seeds=[...]`` does.
    """

    def __init__(self, cfg: DictConfig, seed: int, stream: TaskStream, on_epoch=None):
        cfg = cfg.copy()
        cfg.seed = seed
        self.trainer = make_trainer(cfg, stream, log=None, on_epoch=on_epoch)  # seeds the global generators
        self.rng = global_rng_state(self.trainer.device)

    @property
    def finished(self) -> bool:
        return self.trainer.next_task >= self.trainer.num_tasks

    def step(self) -> None:
        """Train the next task."""
        set_global_rng_state(self.rng, self.trainer.device)
        try:
            self.trainer.run(until=self.trainer.next_task + 1)
        finally:
            self.rng = global_rng_state(self.trainer.device)

    def state_dict(self) -> dict:
        return {"trainer": self.trainer.state_dict(), "rng": self.rng}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.rng = state["rng"]


def task_history(runs: List[SeedTrainer]) -> List[Dict[str, Any]]:
    """Per finished task: ``acc_seen`` and ``valid_acc_seen`` with their accuracy rows (means over seeds), and the
    method's diagnostics of the task (the first seed's)."""
    trainers = [run.trainer for run in runs]
    history = []
    for k in range(trainers[0].next_task):
        entry: Dict[str, Any] = {"task": k + 1}
        for split, rows in ((TEST, [t.rows[k] for t in trainers]), (VALID, [t.valid_rows[k] for t in trainers])):
            seen = on_split("acc_seen", split)
            entry[seen], std = mean_std([seen_accuracy(row) for row in rows])
            if len(rows) > 1:
                entry[f"{seen}_std"] = std
            entry[on_split("acc_row", split)] = [mean_std(list(cells))[0] for cells in zip(*rows)]
        entry["task_diagnostics"] = trainers[0].diagnostics[k]
        history.append(entry)
    return history


def mean_matrix(matrices: List[List[List[Any]]]) -> List[List[Any]]:
    """The cell-wise mean of the seeds' accuracy matrices (None above the diagonal stays None)."""
    return [[None if cells[0] is None else sum(cells) / len(cells) for cells in zip(*rows)]
            for rows in zip(*matrices)]


def task_metrics(runs: List[SeedTrainer]) -> Dict[str, Any]:
    """What a trial reports after a task: that task's entry of ``task_history`` (means over seeds, and std with
    several) and the learning curves so far (``acc_seen_per_task``, ``valid_acc_seen_per_task``: a few numbers,
    what the table, ASHA's record and the study need of a trial stopped early). The whole history, the matrices and
    the diagnostics come once, in the last report: Tune writes every report to the trial's ``result.json`` and
    keeps each trial's last one in its experiment state, so a payload repeated in every report costs every save."""
    history = task_history(runs)
    metrics: Dict[str, Any] = {**history[-1], "seconds": sum(run.trainer.seconds for run in runs)}
    for split in (TEST, VALID):
        seen = on_split("acc_seen", split)
        metrics[f"{seen}_per_task"] = [entry[seen] for entry in history]
    if not runs[0].finished:
        return metrics
    metrics["history"] = history
    finals = [run.trainer.result().to_dict() for run in runs]
    for split in (TEST, VALID):
        for key in (on_split(metric, split) for metric in FINAL):
            metrics[key], std = mean_std([f[key] for f in finals])
            if len(runs) > 1:
                metrics[f"{key}_std"] = std
        matrix = on_split("acc_matrix", split)
        metrics[matrix] = mean_matrix([f[matrix] for f in finals])
    metrics["diagnostics"] = finals[0]["diagnostics"]
    metrics["trainable_params"] = finals[0]["trainable_params"]
    return metrics


def run_trial(params: Dict[str, Any], streams: Dict[str, Any], settings: Dict[str, Any],
              seeds: Optional[List[int]], experiment: TrialFolder, progress: Optional[EpochSender] = None) -> None:
    """One Tune trial: train through the stream of its own settings on each seed, report after every task.

    ``streams`` maps ``stream_key`` to an object-store reference of each stream the driver loaded; a trial
    whose settings ask for a stream that is not there, or get one made from other settings, fails loudly.
    Every report carries a checkpoint (weights, statistics, accuracy rows, RNG states), so a trial
    restarted after a failure, or resumed with the sweep, continues from its last finished task;
    ``started_at_task`` says where this attempt began. A trial restored after its last task (the driver
    died before Tune recorded it as done) reports its result again and trains nothing: from its states, or from
    the report its checkpoint keeps once the driver removed them (``load_checkpoint``).
    A diverging loss (FloatingPointError) ends the trial with ``diverged``: a legitimate outcome of a
    search over learning rates, not a failure worth retrying. ``experiment``: where the trials' folders are (the
    file system and path of the Tune experiment), for their checkpoints when Tune names none. ``progress`` posts
    each seed's newest epoch to the driver's live progress (never through ``tune.report``).
    """
    cfg = trial_run_config(settings, params)
    torch.set_num_threads(cfg.threads)
    runs, trial_id, seeds = [], tune.get_context().get_trial_id(), seeds or [int(cfg.seed)]
    for seed in seeds:
        wanted = stream_settings(cfg, seed)
        if stream_key(wanted) not in streams:
            raise RuntimeError(f"no task stream was loaded for this trial's settings {wanted}; refusing to train")
        stream = ray.get(streams[stream_key(wanted)])
        check_stream(stream, cfg, seed)
        poster = progress.poster(trial_id, seed if len(seeds) > 1 else None) if progress else None
        runs.append(SeedTrainer(cfg, seed, stream, on_epoch=poster))
    filesystem, experiment_path = experiment  # the trials' folders: f"{experiment_path}/{trial_id}"
    restored = load_checkpoint(tune.get_checkpoint(), (filesystem, f"{experiment_path}/{trial_id}"))
    if restored.ended is not None:
        tune.report(restored.ended)
        return
    for run, state in zip(runs, restored.states or []):
        run.load_state_dict(state)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "seeds": [run.trainer.cfg.seed for run in runs],
             "started_at_task": runs[0].trainer.next_task, "recovery": restored.recovery}
    if runs[0].finished:
        tune.report({**task_metrics(runs), **where})
        return
    while not runs[0].finished:
        try:
            for run in runs:
                run.step()
        except FloatingPointError as error:  # its checkpoint holds the report alone: the trial has ended
            report_with_checkpoint({"task": runs[0].trainer.next_task, "diverged": True, "error": str(error), **where})
            return
        report_with_checkpoint({**task_metrics(runs), **where}, runs)
