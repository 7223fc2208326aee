"""Live progress of a running sweep: a line when a trial starts and after each of its tasks, and every
``sweep.progress_s`` seconds the newest epoch of each running trial and a status line with an ETA.

Epochs never go through ``tune.report`` (ASHA decides on tasks; results and checkpoints stay as they are).
Each trial posts its newest epoch, fire and forget, to an ``EpochBoard`` actor that the driver starts; the
driver's ``LiveProgress`` callback reads the board once per interval. Lines are plain (a log file reads the
same as a terminal).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import ray
from ray import tune
from ray.tune.experiment import Trial

from .callbacks import TUNE_ENDED, short_params
from .plan import SweepPlan

if TYPE_CHECKING:  # the board's worker never imports the trainer (nor torch)
    from ..trainer import EpochProgress

BOARD_ANSWER_S = 1.0  # the longest the driver waits for the board before printing what it knows


@ray.remote(num_cpus=0)
class EpochBoard:
    """The newest epoch of each trial: trials post, the driver reads."""

    def __init__(self):
        self.newest: Dict[str, Dict[str, Any]] = {}

    def post(self, trial_id: str, epoch: Dict[str, Any]) -> None:
        self.newest[trial_id] = epoch

    def read(self, trial_ids: List[str]) -> Dict[str, Dict[str, Any]]:
        return {i: self.newest[i] for i in trial_ids if i in self.newest}


@dataclasses.dataclass
class EpochSender:
    """What a trial needs to post its epochs: the board's handle and the interval between posts."""

    board: Any  # an EpochBoard actor handle
    interval_s: float

    def poster(self, trial_id: str, seed: Optional[int] = None) -> "EpochPoster":
        return EpochPoster(self.board, self.interval_s, trial_id, seed)


class EpochPoster:
    """A trial's ``on_epoch`` hook. Posts (fire and forget, tens of microseconds) at most once per interval,
    and on each task's first epoch so that the driver's line is never a task behind."""

    def __init__(self, board, interval_s: float, trial_id: str, seed: Optional[int]):
        self.board, self.interval_s, self.trial_id, self.seed = board, interval_s, trial_id, seed
        self.task, self.sent = 0, -float("inf")

    def __call__(self, progress: "EpochProgress") -> None:
        now = time.monotonic()
        if progress.task == self.task and now - self.sent < self.interval_s:
            return
        self.task, self.sent = progress.task, now
        self.board.post.remote(self.trial_id, {"task": progress.task, "line": progress.line(),
                                               "seconds": progress.seconds, "seed": self.seed})


@contextlib.contextmanager
def epoch_sender(plan: SweepPlan) -> Iterator[Optional[EpochSender]]:
    """A board for as long as the sweep runs, and how trials post to it; None when ``sweep.progress_s=0``
    turns live progress off."""
    interval_s = plan.cfg.sweep.progress_s
    if not interval_s:
        yield None
        return
    board = EpochBoard.remote()
    try:
        yield EpochSender(board, interval_s)
    finally:
        ray.kill(board)


# ---- pure parts: the ETA and the lines ---------------------------------------------------------------
def seconds_per_task(reports: Iterable[Tuple[int, float]]) -> Optional[float]:
    """Mean training seconds per finished task over (tasks finished, training seconds) of each trial's last
    report; None before any task finished."""
    tasks = seconds = 0.0
    for done, spent in reports:
        tasks, seconds = tasks + done, seconds + spent
    return seconds / tasks if tasks else None


def remaining_tasks(tasks_done_unended: Sequence[int], not_started: int, num_tasks: int) -> int:
    """The task budget left: what each unended trial has still to train, and every trial not yet created.
    Under ASHA an upper bound: stopped trials give theirs up."""
    return sum(num_tasks - done for done in tasks_done_unended) + not_started * num_tasks


def eta_seconds(per_task: Optional[float], remaining: int, concurrency: int, unended_trials: int) -> Optional[float]:
    """Mean seconds per finished task × remaining task budget / trials at once (no more at once than trials
    are left). Leaves out Tune's own time per trial and the task in progress: a rough figure, not a promise."""
    if per_task is None:
        return None
    return per_task * remaining / max(1, min(concurrency, unended_trials))


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def best_so_far(values: Iterable[Tuple[str, Optional[float]]], mode: str) -> Optional[Tuple[str, float]]:
    """(trial id, value) of the best finished value by mode, or None."""
    found = [(trial_id, value) for trial_id, value in values if value is not None]
    if not found:
        return None
    pick = max if mode == "max" else min
    return pick(found, key=lambda item: item[1])


def status_line(running: int, pending: int, done: int, total: int,
                best: Sequence[Tuple[str, Optional[Tuple[str, float]]]],
                elapsed_s: float, eta_s: Optional[float]) -> str:
    """``best``: (metric, best_so_far) per objective of the sweep."""
    scores = ", ".join(f"{metric} {found[1]:.2f} ({found[0]})" if found else f"{metric} -" for metric, found in best)
    return (f"status: {running} running, {pending} pending, {done} done of {total}; best {scores}; "
            f"{format_duration(elapsed_s)} elapsed, ETA {format_duration(eta_s)}")


def epoch_line(epoch: Optional[Dict[str, Any]], tasks_reported: int, num_tasks: int) -> str:
    """A running trial's newest epoch, or where it stands when no epoch of its current task has come yet."""
    if epoch is None or epoch["task"] <= tasks_reported:
        return f"task {tasks_reported + 1}/{num_tasks}: no epoch finished yet"
    seed = "" if epoch["seed"] is None else f"seed {epoch['seed']} "
    return f"{seed}{epoch['line']}  ({epoch['seconds']:.1f} s)"


# ---- the driver's callback ---------------------------------------------------------------------------
class LiveProgress(tune.Callback):
    """Prints trial starts and per-task results as they come, and every ``sweep.progress_s`` seconds an
    epoch line per running trial and the status line (from ``on_step_begin``: Tune steps every 0.1 s)."""

    def __init__(self, plan: SweepPlan, num_tasks: int, concurrency: int, out: Callable[[str], None],
                 sender: Optional[EpochSender] = None, total: Optional[int] = None):
        self.plan, self.num_tasks, self.concurrency, self.out = plan, num_tasks, concurrency, out
        self.total = total or plan.total_trials  # the trials of this stage: the search's, or the confirmation's
        self.board = sender.board if sender else None
        self.interval_s = plan.cfg.sweep.progress_s
        self.started = time.monotonic()
        self.next_tick = self.started + self.interval_s
        self.margin = " " * (2 * len(str(self.total)) + 3)  # under ProgressLines' "[ n/N]"

    def __getstate__(self):
        """Tune pickles its callbacks into the experiment state: a resume brings a board of its own."""
        return {**self.__dict__, "board": None}

    def _line(self, trial, text: str) -> None:
        self.out(f"{self.margin} {trial.trial_id}  {text}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self._line(trial, f"started  {short_params(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        signal = self.plan.signal
        if result.get(signal) is not None:  # a diverged trial's report has none: ProgressLines says so
            self._line(trial, f"task {result['task']}/{self.num_tasks}  {signal} {result[signal]:.2f}  "
                              f"({result['seconds']:.1f} s)")

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        if not self.interval_s or now < self.next_tick:
            return
        self.next_tick = now + self.interval_s
        running = [t for t in trials if t.status == Trial.RUNNING]
        epochs = self._newest_epochs([t.trial_id for t in running])
        for trial in running:
            self._line(trial, epoch_line(epochs.get(trial.trial_id), _tasks_done(trial), self.num_tasks))
        self.out(self.status(trials, now))

    def _newest_epochs(self, trial_ids: List[str]) -> Dict[str, Dict[str, Any]]:
        if self.board is None or not trial_ids:
            return {}
        try:
            return ray.get(self.board.read.remote(trial_ids), timeout=BOARD_ANSWER_S)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            return {}  # the lines say "no epoch finished yet"; the next interval asks again

    def status(self, trials, now: float) -> str:
        ended = [t for t in trials if t.status in TUNE_ENDED]
        unended = [t for t in trials if t.status not in TUNE_ENDED]
        running = sum(t.status == Trial.RUNNING for t in trials)
        not_created = max(0, self.total - len(trials))
        reports = [(_tasks_done(t), t.last_result["seconds"]) for t in trials if (t.last_result or {}).get("seconds")]
        remaining = remaining_tasks([_tasks_done(t) for t in unended], not_created, self.num_tasks)
        eta = eta_seconds(seconds_per_task(reports), remaining, self.concurrency, len(unended) + not_created)
        best = [(metric, best_so_far(((t.trial_id, (t.last_result or {}).get(metric)) for t in trials), mode))
                for metric, mode in zip(self.plan.metrics, self.plan.modes)]
        return status_line(running, self.total - running - len(ended), len(ended), self.total,
                           best, now - self.started, eta)


def _tasks_done(trial) -> int:
    result = trial.last_result or {}
    return 0 if result.get("acc_seen") is None else int(result.get("task", 0))
