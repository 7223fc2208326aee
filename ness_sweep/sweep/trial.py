"""The worker side of a sweep: one Tune trial trains its configuration through its own task stream on each
seed, reports after every task and checkpoints there."""

from __future__ import annotations

import posixpath
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pyarrow.fs as pafs
import ray
import torch
from omegaconf import DictConfig
from ray import tune

from ..benchmarks import check_stream, stream_settings
from ..config import first_line
from ..data import TaskStream
from ..methods import make_trainer
from ..metrics import FINAL, TEST, VALID, mean_std, on_split, seen_accuracy
from ..trainer import global_rng_state, set_global_rng_state
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
    method's diagnostics of the task (the first seed's).
    Every report carries the whole history, so a run resumed elsewhere can be logged from task 1."""
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
    """What a trial reports after a task: means over seeds (and std with several); everything at the end, on
    the test and the validation splits."""
    history = task_history(runs)
    metrics: Dict[str, Any] = {**history[-1], "history": history,
                               "seconds": sum(run.trainer.seconds for run in runs)}
    if not runs[0].finished:
        return metrics
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


CHECKPOINT_FILE = "state.pt"


def load_checkpoint(checkpoint: Optional[tune.Checkpoint]) -> Tuple[Optional[list], Optional[str]]:
    """The states of the trial's newest readable checkpoint, and a note when an unreadable one was passed over.

    Tune hands back the last checkpoint its experiment state recorded, which can lag behind what the trial
    wrote before a crash; the newest one in the trial's folder is taken instead. Tune keeps the last two:
    a truncated or garbled newest one falls back to the one before, and with none readable the trial starts
    afresh. The note says which, for the results table.
    """
    if checkpoint is None:
        return None, None
    failures = []
    for candidate in _trial_checkpoints(checkpoint):
        label = posixpath.basename(candidate.path.rstrip("/"))
        try:
            with candidate.as_directory() as directory:
                states = torch.load(Path(directory) / CHECKPOINT_FILE, weights_only=False)
        except Exception as error:  # truncated, garbled or missing: unpickling fails in many ways
            failures.append(f"{label} unreadable ({first_line(error)})")
            continue
        return states, ("; ".join(failures) + f"; continued from {label}") if failures else None
    return None, "; ".join(failures) + "; started afresh"


def _trial_checkpoints(checkpoint: tune.Checkpoint) -> List[tune.Checkpoint]:
    """The trial's checkpoints (``checkpoint_NNNNNN`` beside the given one, which is always among them), the
    highest number first. Numbers follow progress even after a restore from a lagging state: Tune numbers
    the next checkpoints from the one it knew, and each holds a state at least as far as the one it replaces."""
    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent = posixpath.dirname(path)
    try:
        entries = [e for e in fs.get_file_info(pafs.FileSelector(parent))
                   if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_")]
    except OSError:
        entries = []
    newest_first = sorted(entries, key=lambda e: e.base_name, reverse=True)
    paths = [e.path for e in newest_first] + ([] if any(e.path == path for e in entries) else [path])
    return [tune.Checkpoint(p, filesystem=fs) for p in paths]


def run_trial(params: Dict[str, Any], streams: Dict[str, Any], settings: Dict[str, Any],
              seeds: Optional[List[int]], progress: Optional[EpochSender] = None) -> None:
    """One Tune trial: train through the stream of its own settings on each seed, report after every task.

    ``streams`` maps ``stream_key`` to an object-store reference of each stream the driver loaded; a trial
    whose settings ask for a stream that is not there, or get one made from other settings, fails loudly.
    Every report carries a checkpoint (weights, statistics, accuracy rows, RNG states), so a trial
    restarted after a failure, or resumed with the sweep, continues from its last finished task;
    ``started_at_task`` says where this attempt began. A trial restored after its last task (the driver
    died before Tune recorded it as done) reports its result again and trains nothing.
    A diverging loss (FloatingPointError) ends the trial with ``diverged``: a legitimate outcome of a
    search over learning rates, not a failure worth retrying. ``progress`` posts each seed's newest epoch
    to the driver's live progress (never through ``tune.report``).
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
    states, recovery = load_checkpoint(tune.get_checkpoint())
    for run, state in zip(runs, states or []):
        run.load_state_dict(state)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "seeds": [run.trainer.cfg.seed for run in runs],
             "started_at_task": runs[0].trainer.next_task, "recovery": recovery}
    if runs[0].finished:
        tune.report({**task_metrics(runs), **where})
        return
    while not runs[0].finished:
        try:
            for run in runs:
                run.step()
        except FloatingPointError as error:
            tune.report({"task": runs[0].trainer.next_task, "diverged": True, "error": str(error), **where})
            return
        metrics = {**task_metrics(runs), **where}
        with tempfile.TemporaryDirectory() as directory:
            torch.save([run.state_dict() for run in runs], Path(directory) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
