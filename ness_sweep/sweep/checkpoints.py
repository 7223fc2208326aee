"""A trial's checkpoints: what each holds (the trainers' states and the report it came with), how a restarted
trial reads them, and how the driver keeps them small (``Checkpoints``)."""

from __future__ import annotations

import contextlib
import json
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyarrow.fs as pafs
import torch
from ray import tune

from ..config import first_line
from .plan import SweepPlan

TrialFolder = Tuple[pafs.FileSystem, str]  # a trial's folder in the sweep folder: its file system and path
CHECKPOINT_FILE = "state.pt"  # the trainers' states: what a restart continues from
REPORT_FILE = "report.json"  # the report the checkpoint came with; alone in the newest one once the trial has ended


@dataclass
class Restored:
    """What a trial's checkpoints give a restarted trial: states to continue from, or the report it ended with
    (``Checkpoints`` removed its states when it ended), and a note for the table's ``recovery``."""

    states: Optional[list] = None
    ended: Optional[Dict[str, Any]] = None
    recovery: Optional[str] = None


def load_checkpoint(checkpoint: Optional[tune.Checkpoint], trial_folder: Optional[TrialFolder] = None) -> Restored:
    """The trial's newest readable checkpoint, and a note when an unreadable one was passed over.

    Tune hands back the last checkpoint its experiment state recorded, which can lag behind what the trial wrote
    before a crash (or be none: a state saved before the trial's first checkpoint); the newest one in the trial's
    folder (``trial_folder``: its file system and path; else the given checkpoint's parent) is taken instead.
    The driver keeps the states of the last two and empties older ones (``Checkpoints``): a truncated or garbled
    newest one falls back to the one before, and with none readable the trial starts afresh. A newest one holding
    its report alone is a trial that ended (a driver killed before Tune recorded the end): it reports that again.
    """
    candidates = _trial_checkpoints(checkpoint, trial_folder)
    if not candidates:
        return Restored()
    failures = []
    for rank, candidate in enumerate(candidates):
        label = posixpath.basename(candidate.path.rstrip("/"))
        with candidate.as_directory() as directory:
            files = {p.name for p in Path(directory).iterdir()} if Path(directory).is_dir() else set()
            if CHECKPOINT_FILE not in files:
                if rank == 0 and REPORT_FILE in files:
                    return Restored(ended=json.loads((Path(directory) / REPORT_FILE).read_text()))
                continue  # emptied: an older checkpoint
            try:
                states = torch.load(Path(directory) / CHECKPOINT_FILE, weights_only=False)
            except Exception as error:  # truncated or garbled: unpickling fails in many ways
                failures.append(f"{label} unreadable ({first_line(error)})")
                continue
        return Restored(states, recovery=("; ".join(failures) + f"; continued from {label}") if failures else None)
    return Restored(recovery="; ".join(failures or ["no checkpoint left"]) + "; started afresh")


def report_with_checkpoint(metrics: Dict[str, Any], runs: Sequence[Any] = ()) -> None:
    """``tune.report`` with a checkpoint holding the report itself and, given ``runs``, their states."""
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / REPORT_FILE).write_text(json.dumps(metrics))
        if runs:
            torch.save([run.state_dict() for run in runs], Path(directory) / CHECKPOINT_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def _trial_checkpoints(given: Optional[tune.Checkpoint], trial_folder: Optional[TrialFolder]) -> List[tune.Checkpoint]:
    """The trial's checkpoints (``checkpoint_NNNNNN`` in its folder, and the given one), the highest number first.
    Numbers follow progress even after a restore from a lagging state: Tune numbers the next checkpoints from the
    one it knew, and each holds a state at least as far as the one it replaces."""
    if trial_folder is None and given is None:
        return []
    fs, folder = trial_folder or (given.filesystem, posixpath.dirname(given.path.rstrip("/")))
    try:
        entries = [e for e in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
                   if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_")]
    except OSError:
        entries = []
    paths = [e.path for e in sorted(entries, key=lambda e: e.base_name, reverse=True)]
    if given is not None and given.path.rstrip("/") not in paths:
        paths.append(given.path.rstrip("/"))
    return [tune.Checkpoint(p, filesystem=fs) for p in paths]


class Checkpoints(tune.Callback):
    """Keeps the states of a running trial's two newest checkpoints (a restart's, and one to fall back on when the
    newest is unreadable: ``trial.load_checkpoint``) and, unless ``trial.keep_checkpoints``, removes every state of
    a trial when it ends (about 1 MB a trial that nothing reads again), leaving its newest checkpoint's report.

    Done here rather than by Tune's ``CheckpointConfig(num_to_keep)``, which saves the whole experiment state
    whenever a trial has checkpointed that many times: a cost per trial that grows with the sweep. Folders are
    emptied, never removed: Tune's saved state may name an older checkpoint than the newest (it is saved every few
    seconds), and Tune refuses to restore a trial whose named checkpoint is gone. A driver killed after a trial
    ended and before Tune saved that leaves the trial to restart on resume: it finds its report alone and reports
    it again."""

    KEEP = 2

    def __init__(self, plan: SweepPlan):
        self.filesystem, self.keep_finished = plan.folder.filesystem, plan.cfg.trial.keep_checkpoints
        self.paths: Dict[str, List[str]] = {}  # trial id -> its checkpoints this run saw, oldest first

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        paths = self.paths.setdefault(trial.trial_id, [])
        paths.append(checkpoint.path)
        while len(paths) > self.KEEP:
            self._empty(paths.pop(0))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.paths.pop(trial.trial_id, None)
        if self.keep_finished or not trial.path:
            return
        found = self.filesystem.get_file_info(pafs.FileSelector(trial.path, allow_not_found=True))
        folders = sorted(e.path for e in found
                         if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_"))
        for folder in folders[:-1]:
            self._empty(folder)
        for newest in folders[-1:]:
            with contextlib.suppress(OSError):
                self.filesystem.delete_file(f"{newest}/{CHECKPOINT_FILE}")

    def _empty(self, folder: str) -> None:
        with contextlib.suppress(OSError):  # already gone; a removal that fails costs space, never a record
            self.filesystem.delete_dir_contents(folder)
