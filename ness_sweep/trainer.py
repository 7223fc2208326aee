"""The continual loop, method-agnostic: for each task ``before_task → train → after_task``, then evaluate every
seen task. The loop names no method: it drives the ``methods.base.Method`` it is given through its hooks
(before a task, the parameters that train, a batch's loss, the gradient before the step, after a task, the
task's diagnostics) and records what they report.

Between tasks (``run(until=k)`` returns there) ``state_dict`` / ``load_state_dict`` are valid: the sweep
reports and checkpoints at these points. ``on_epoch`` receives an ``EpochProgress`` after every epoch.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple, Type, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import metrics
from .data import Task, TaskStream, in_batches, seed_everything
from .metrics import TEST, VALID
from .models import build_model, pick_device

if TYPE_CHECKING:  # the loop only drives the hooks; the registry (methods/__init__) builds it with a method
    from .methods.base import Method

def _cuda(device: Union[torch.device, str]) -> Optional[torch.device]:
    device = torch.device(device)
    return device if device.type == "cuda" else None


def global_rng_state(device: Union[torch.device, str]) -> dict:
    """The global generators a run draws from: python, numpy, torch's CPU one and, for a CUDA ``device``,
    that device's. One capture for checkpoints and for seeds that take turns in one process."""
    cuda = _cuda(device)
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(cuda) if cuda is not None else None}


def set_global_rng_state(state: dict, device: Union[torch.device, str]) -> None:
    """Restore ``global_rng_state``'s capture. A saved CUDA state is ignored unless ``device`` is CUDA, so a
    checkpoint from a GPU machine resumes on a CPU one."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = _cuda(device)
    if state["cuda"] is not None and cuda is not None:
        torch.cuda.set_rng_state(state["cuda"], cuda)


@dataclass(frozen=True)
class EpochProgress:
    """One finished epoch, for live progress: only numbers the loop has read anyway (no extra device reads)."""

    task: int  # counted from 1
    num_tasks: int
    epoch: int  # counted from 1
    epochs: int  # train.epochs: the most this task runs (lr_min may end it earlier)
    train_loss: float
    valid_loss: float
    lr: float  # after this epoch's schedule step: the next epoch's
    seconds: float  # this run's training time so far, counted as the ``seconds`` metric counts it

    def line(self) -> str:
        return (f"task {self.task}/{self.num_tasks} epoch {self.epoch}/{self.epochs} "
                f"loss {self.train_loss:.4f} valid {self.valid_loss:.4f} lr {self.lr:.2g}")


@dataclass
class RunResult:
    acc_matrix: List[List[Optional[float]]]  # on each task's test split
    valid_acc_matrix: List[List[Optional[float]]]  # the same on each task's validation split: what a sweep selects on
    diagnostics: List[Dict[str, float]]  # per task, what the method reported (NESS: rank per layer)
    trainable_params: List[int]
    seconds: float

    def to_dict(self) -> dict:
        return {
            **metrics.final_metrics(self.acc_matrix),
            **metrics.final_metrics(self.valid_acc_matrix, metrics.VALID),
            "acc_matrix": self.acc_matrix,
            "valid_acc_matrix": self.valid_acc_matrix,
            "diagnostics": self.diagnostics,
            "trainable_params": self.trainable_params,
            "seconds": self.seconds,
        }


def square_matrix(rows: List[List[float]], size: int) -> List[List[Optional[float]]]:
    """Pad row i (i+1 entries) with None above the diagonal."""
    return [list(row) + [None] * (size - len(row)) for row in rows]


class Trainer:
    """Trains ``cfg.model`` through the stream with a method (``methods.make_trainer`` picks it from the
    config), evaluating every seen task after each task."""

    def __init__(self, cfg, stream: TaskStream, method: Type[Method], device: Optional[torch.device] = None,
                 log: Optional[Callable[[str], None]] = print,
                 on_epoch: Optional[Callable[[EpochProgress], None]] = None):
        seed_everything(cfg.seed)
        self.cfg = cfg
        self.device = device or pick_device(cfg.device)
        self.stream = stream.to(self.device)
        self.model = build_model(cfg.model, stream).to(self.device)
        self.log = log or (lambda message: None)
        self.method = method(cfg, self.model, self.stream)
        self.method.log = self.log
        self.on_epoch = on_epoch
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.next_task = 0
        self.rows: List[List[float]] = []  # test accuracies after each task
        self.valid_rows: List[List[float]] = []  # validation accuracies after each task
        self.diagnostics: List[Dict[str, float]] = []
        self.trainable_params: List[int] = []
        self.seconds = 0.0
        self.task_started = time.perf_counter()  # progress counts the current task's time from here

    @property
    def num_tasks(self) -> int:
        return len(self.stream.tasks)

    def run(self, until: Optional[int] = None) -> RunResult:
        """Train the remaining tasks (or up to task ``until``, counted from 1), evaluating after each."""
        for t in range(self.next_task, until or self.num_tasks):
            self.task_started = time.perf_counter()
            self.method.before_task(t)
            params = self.train_only(self.method.trainable_parameters(t))
            self.train_loop(t, params)
            self.method.after_task(t)
            row = [self.accuracy(self.stream.tasks[j], j) for j in range(t + 1)]
            valid_row = [self.accuracy(self.stream.tasks[j], j, VALID) for j in range(t + 1)]
            self.seconds += time.perf_counter() - self.task_started
            self.rows.append(row)
            self.valid_rows.append(valid_row)
            self.diagnostics.append({key: float(value) for key, value in self.method.diagnostics(t).items()})
            self.trainable_params.append(sum(p.numel() for p in params))
            self.next_task = t + 1
            self.log(f"task {t + 1}/{self.num_tasks} done: accuracy on seen tasks "
                     + " ".join(f"{a:.1f}" for a in row) + f" (mean {metrics.seen_accuracy(row):.2f}; "
                     f"validation {metrics.seen_accuracy(valid_row):.2f})")
        return self.result()

    def train_only(self, params: List[nn.Parameter]) -> List[nn.Parameter]:
        """Freeze every parameter of the model but ``params``; returns them."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        return params

    # ---- train loop: the paper's protocol ---------------------------------------------------
    def make_optimizer(self, params: List[nn.Parameter]) -> torch.optim.Optimizer:
        tc = self.cfg.train
        if tc.optimizer == "adam":
            return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)

    def train_loop(self, t: int, params: List[nn.Parameter]) -> None:
        """Epochs with validation; lr ÷ lr_factor after lr_patience epochs without improvement, stop
        below lr_min, and keep the weights with the best validation loss."""
        tc, task = self.cfg.train, self.stream.tasks[t]
        optimizer = self.make_optimizer(params)
        lr, patience = tc.lr, tc.lr_patience
        best_loss, best = math.inf, [p.detach().clone() for p in params]
        for epoch in range(1, tc.epochs + 1):
            total, seen = self.epoch_loss_sum(task, t, optimizer)
            train_loss = total.item() / max(seen, 1)  # one read of the device per epoch
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training loss became {train_loss} at task {t + 1}, epoch {epoch} "
                                         f"(train.lr={tc.lr} may be too large)")
            valid_loss = self.loss(task, t)
            if valid_loss < best_loss:
                best_loss, patience = valid_loss, tc.lr_patience
                best = [p.detach().clone() for p in params]
            else:
                patience -= 1
                if patience <= 0:
                    lr /= tc.lr_factor
                    patience = tc.lr_patience
                    for group in optimizer.param_groups:
                        group["lr"] = lr
            self.epoch_done(EpochProgress(t + 1, self.num_tasks, epoch, tc.epochs, train_loss, valid_loss, lr,
                                          self.seconds + time.perf_counter() - self.task_started))
            if lr < tc.lr_min:
                break
        with torch.no_grad():
            for p, value in zip(params, best):
                p.copy_(value)

    def epoch_done(self, progress: EpochProgress) -> None:
        """The per-epoch log line and the progress hook; neither touches training state."""
        self.log(progress.line())
        if self.on_epoch is not None:
            self.on_epoch(progress)

    def epoch_order(self, n: int) -> Tensor:
        """This epoch's sample order on the device. Drawn from the CPU generator (checkpointed, and the same
        order for a seed on every device), then copied once: no index tensor crosses per batch."""
        return torch.randperm(n, generator=self.shuffle).to(self.device)

    def epoch_loss_sum(self, task: Task, t: int, optimizer: torch.optim.Optimizer) -> Tuple[Tensor, int]:
        """One training epoch; the summed loss stays on the device (float64, as the host sum was), so the
        GPU never waits for the host between batches. Returns it with the number of samples trained."""
        model, n, size = self.model, len(task.y_train), self.cfg.train.batch_size
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        for idx in self.epoch_order(n).split(size):
            if len(idx) < 2 <= n:
                continue  # batch norm cannot normalise a single sample
            x = task.inputs(task.x_train[idx])
            loss = self.method.batch_loss(t, x, F.cross_entropy(model(x, t), task.y_train[idx]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.method.adjust_gradients(t)
            optimizer.step()
            total += loss.detach().double() * len(idx)
            seen += len(idx)
        return total, seen

    # ---- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def _predict(self, task: Task, t: int, x: Tensor, y: Tensor):
        """Outputs and labels in batches of ``train.eval_batch_size``, over slices of the stored tensors (no index
        copies). Models with batch statistics normalise each batch by its own, so their accuracy depends on
        that size; the others' does not."""
        self.model.eval()
        size = self.cfg.train.eval_batch_size
        for x_batch, y_batch in zip(in_batches(x, size), in_batches(y, size)):
            yield self.model(task.inputs(x_batch), t), y_batch

    def valid_loss_sum(self, task: Task, t: int) -> Tensor:
        """Summed validation cross-entropy, on the device in float64 (as the host sum was)."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for out, y in self._predict(task, t, task.x_valid, task.y_valid):
            total += F.cross_entropy(out, y, reduction="sum").double()
        return total

    def correct_count(self, task: Task, t: int, split: str = TEST) -> Tensor:
        """Samples of the split (test or valid) that head t gets right, counted on the device."""
        x, y = (task.x_valid, task.y_valid) if split == VALID else (task.x_test, task.y_test)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for out, labels in self._predict(task, t, x, y):
            correct += (out.argmax(1) == labels).sum()
        return correct

    def loss(self, task: Task, t: int) -> float:
        """Mean validation cross-entropy: one read of the device per evaluation."""
        return self.valid_loss_sum(task, t).item() / len(task.y_valid)

    def accuracy(self, task: Task, t: int, split: str = TEST) -> float:
        """Accuracy (%) of head t on the task's test or validation split: one read of the device per evaluation."""
        total = len(task.y_valid) if split == VALID else len(task.y_test)
        return 100.0 * self.correct_count(task, t, split).item() / total

    # ---- results and state ------------------------------------------------------------------
    def result(self) -> RunResult:
        return RunResult(square_matrix(self.rows, self.num_tasks), square_matrix(self.valid_rows, self.num_tasks),
                         [dict(d) for d in self.diagnostics],
                         list(self.trainable_params), self.seconds)

    def state_dict(self) -> dict:
        """Everything needed to continue from the next task: weights (merged), rows, RNGs. Every tensor is
        on the CPU, so a checkpoint loads on any machine, with or without CUDA."""
        return {
            "next_task": self.next_task,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "rows": [list(r) for r in self.rows],
            "valid_rows": [list(r) for r in self.valid_rows],
            "diagnostics": [dict(d) for d in self.diagnostics],
            "method": self.method.state_dict(),
            "trainable_params": list(self.trainable_params),
            "seconds": self.seconds,
            "rng": {**global_rng_state(self.device), "shuffle": self.shuffle.get_state()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.next_task = state["next_task"]
        self.rows = [list(r) for r in state["rows"]]
        self.valid_rows = [list(r) for r in state["valid_rows"]]
        self.diagnostics = [dict(d) for d in state["diagnostics"]]
        self.method.load_state_dict(state["method"])
        self.trainable_params = list(state["trainable_params"])
        self.seconds = state["seconds"]
        set_global_rng_state(state["rng"], self.device)
        self.shuffle.set_state(state["rng"]["shuffle"])
