"""The continual loop, on FACIL's approach template: for each task ``pre_train → train_loop → post_train``,
then evaluate every seen task.

``Trainer`` is plain fine-tuning (``method=finetune``), the forgetting baseline: every task trains the whole
body and its own head. ``NessTrainer`` overrides only what NESS changes: before a task it fits the null-space
subspaces and attaches adapters, during it trains only the A matrices and the task's head (batch-norm affine
parameters stay as task 0 left them), after it merges and, with stream memory, adds the task's statistics.
``make_trainer`` picks the class of ``cfg.method`` from ``METHODS``.

Between tasks (``run(until=k)`` returns there) ``state_dict`` / ``load_state_dict`` are valid: the sweep
reports and checkpoints at these points. ``on_epoch`` receives an ``EpochProgress`` after every epoch.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Type, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import metrics, ness
from .config import UserError
from .data import Task, TaskStream, seed_everything
from .models import build_model, pick_device

EVAL_BATCH_SIZE = 256  # evaluation and statistics batches: larger than training's, same results


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
    acc_matrix: List[List[Optional[float]]]
    ranks: List[Dict[str, int]]
    trainable_params: List[int]
    seconds: float

    def to_dict(self) -> dict:
        R = self.acc_matrix
        return {
            "acc": metrics.average_accuracy(R),
            "bwt": metrics.backward_transfer(R),
            "forgetting": metrics.forgetting(R),
            "acc_matrix": R,
            "ranks": self.ranks,
            "trainable_params": self.trainable_params,
            "seconds": self.seconds,
        }


def square_matrix(rows: List[List[float]], size: int) -> List[List[Optional[float]]]:
    """Pad row i (i+1 entries) with None above the diagonal."""
    return [list(row) + [None] * (size - len(row)) for row in rows]


class Trainer:
    """Plain fine-tuning: every task trains the whole body and its own head."""

    method = "finetune"  # the cfg.method this class trains

    def __init__(self, cfg, stream: TaskStream, device: Optional[torch.device] = None,
                 log: Optional[Callable[[str], None]] = print,
                 on_epoch: Optional[Callable[[EpochProgress], None]] = None):
        if cfg.method != self.method:  # a caller that bypassed make_trainer would train the wrong method
            raise ValueError(f"{type(self).__name__} trains method={self.method}, not method={cfg.method}: "
                             "build trainers with make_trainer")
        seed_everything(cfg.seed)
        self.cfg = cfg
        self.device = device or pick_device(cfg.device)
        self.stream = stream.to(self.device)
        self.model = build_model(cfg.model, stream).to(self.device)
        self.log = log or (lambda message: None)
        self.on_epoch = on_epoch
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.next_task = 0
        self.rows: List[List[float]] = []
        self.ranks: List[Dict[str, int]] = []
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
            ranks = self.pre_train(t)
            params = self.trainable_parameters(t)
            self.train_loop(t, params)
            self.post_train(t)
            row = [self.accuracy(self.stream.tasks[j], j) for j in range(t + 1)]
            self.seconds += time.perf_counter() - self.task_started
            self.rows.append(row)
            self.ranks.append(ranks)
            self.trainable_params.append(sum(p.numel() for p in params))
            self.next_task = t + 1
            self.log(f"task {t + 1}/{self.num_tasks} done: accuracy on seen tasks "
                     + " ".join(f"{a:.1f}" for a in row) + f" (mean {metrics.seen_accuracy(row):.2f})")
        return self.result()

    # ---- the template: what a method overrides ----------------------------------------------
    def pre_train(self, t: int) -> Dict[str, int]:
        """Prepare task t; returns the rank per adapted layer (none: fine-tuning adapts nothing)."""
        return {}

    def trainable_parameters(self, t: int) -> List[nn.Parameter]:
        """The body and task t's head; the other heads stay as their tasks left them."""
        return self.train_only(list(self.model.body.parameters()) + list(self.model.heads[t].parameters()))

    def post_train(self, t: int) -> None:
        """Finish task t before it is evaluated: nothing to do for fine-tuning."""

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
            loss = F.cross_entropy(model(task.inputs(task.x_train[idx]), t), task.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * len(idx)
            seen += len(idx)
        return total, seen

    # ---- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def _predict(self, task: Task, t: int, x: Tensor, y: Tensor):
        """Outputs and labels batch by batch, over slices of the stored tensors (no index copies)."""
        self.model.eval()
        for x_batch, y_batch in zip(x.split(EVAL_BATCH_SIZE), y.split(EVAL_BATCH_SIZE)):
            yield self.model(task.inputs(x_batch), t), y_batch

    def valid_loss_sum(self, task: Task, t: int) -> Tensor:
        """Summed validation cross-entropy, on the device in float64 (as the host sum was)."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for out, y in self._predict(task, t, task.x_valid, task.y_valid):
            total += F.cross_entropy(out, y, reduction="sum").double()
        return total

    def correct_count(self, task: Task, t: int) -> Tensor:
        """Test samples head t gets right, counted on the device."""
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for out, y in self._predict(task, t, task.x_test, task.y_test):
            correct += (out.argmax(1) == y).sum()
        return correct

    def loss(self, task: Task, t: int) -> float:
        """Mean validation cross-entropy: one read of the device per evaluation."""
        return self.valid_loss_sum(task, t).item() / len(task.y_valid)

    def accuracy(self, task: Task, t: int) -> float:
        """Test accuracy (%) of head t: one read of the device per evaluation."""
        return 100.0 * self.correct_count(task, t).item() / len(task.y_test)

    # ---- results and state ------------------------------------------------------------------
    def result(self) -> RunResult:
        return RunResult(square_matrix(self.rows, self.num_tasks), list(self.ranks),
                         list(self.trainable_params), self.seconds)

    def state_dict(self) -> dict:
        """Everything needed to continue from the next task: weights (merged), rows, RNGs. Every tensor is
        on the CPU, so a checkpoint loads on any machine, with or without CUDA."""
        return {
            "next_task": self.next_task,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "rows": [list(r) for r in self.rows],
            "ranks": [dict(r) for r in self.ranks],
            "trainable_params": list(self.trainable_params),
            "seconds": self.seconds,
            "rng": {**global_rng_state(self.device), "shuffle": self.shuffle.get_state()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.next_task = state["next_task"]
        self.rows = [list(r) for r in state["rows"]]
        self.ranks = [dict(r) for r in state["ranks"]]
        self.trainable_params = list(state["trainable_params"])
        self.seconds = state["seconds"]
        set_global_rng_state(state["rng"], self.device)
        self.shuffle.set_state(state["rng"]["shuffle"])


class NessTrainer(Trainer):
    """NESS: after task 0, each task trains only null-space adapters (W + A Bᵀ, B fixed) and its head."""

    method = "ness"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stream_grams: Dict[str, Tensor] = {}  # ness.memory=stream: Σ of finished tasks' Gram matrices

    def pre_train(self, t: int) -> Dict[str, int]:
        """Attach adapters on the subspaces of the previous tasks' smallest singular values."""
        if t == 0:
            return super().pre_train(t)
        n = self.cfg.ness
        grams = self.stream_grams if n.memory == "stream" else self.replay_grams(t)
        bases, _ = ness.subspace_bases(grams, n.threshold, n.norm, n.rank)
        ness.attach_adapters(self.model, bases)
        ranks = {name: int(b.shape[1]) for name, b in bases.items()}
        self.log(f"task {t + 1}/{self.num_tasks}: null-space ranks " + ", ".join(f"{k}={v}" for k, v in ranks.items()))
        return ranks

    def trainable_parameters(self, t: int) -> List[nn.Parameter]:
        """Task 0 trains everything; later tasks only the A matrices and their head."""
        if t == 0:
            return super().trainable_parameters(t)
        adapters = [m.A for m in self.model.body.modules() if isinstance(m, ness.NullSpaceAdapter) and m.rank > 0]
        return self.train_only(adapters + list(self.model.heads[t].parameters()))

    def post_train(self, t: int) -> None:
        """Merge W ← W + A Bᵀ; with stream memory, add this task's Gram matrices once (not after the last)."""
        ness.merge_adapters(self.model)
        if self.cfg.ness.memory == "stream" and t + 1 < self.num_tasks:
            for name, g in self.grams([self.stream.tasks[t]]).items():
                self.stream_grams[name] = g if name not in self.stream_grams else self.stream_grams[name] + g

    def replay_grams(self, t: int) -> Dict[str, Tensor]:
        """The paper's statistics: all previous tasks' inputs through the current network, one pass."""
        return self.grams(self.stream.tasks[:t])

    def grams(self, tasks: List[Task]) -> Dict[str, Tensor]:
        """Gram matrices of every adapted layer's inputs over the tasks' training data, in one forward pass."""
        return ness.collect_grams(self.model.body, ness.adaptable_layers(self.model), self.task_inputs(tasks))

    def task_inputs(self, tasks: List[Task]):
        """Training inputs of the given tasks, batch by batch, normalised on the device (slices of the
        stored tensors: no index tensor crosses from the host)."""
        for task in tasks:
            for x in task.x_train.split(EVAL_BATCH_SIZE):
                yield task.inputs(x)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stream_grams": {k: v.cpu() for k, v in self.stream_grams.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stream_grams = {k: v.to(self.device) for k, v in state["stream_grams"].items()}


METHODS: Dict[str, Type[Trainer]] = {"ness": NessTrainer, "finetune": Trainer}


def check_method(method: str) -> None:
    """Refuse an unknown method before any work: a one-line UserError naming the valid ones."""
    if method not in METHODS:
        raise UserError(f"method={method}: must be one of {', '.join(METHODS)}")


def make_trainer(cfg, stream: TaskStream, device: Optional[torch.device] = None,
                 log: Optional[Callable[[str], None]] = print,
                 on_epoch: Optional[Callable[[EpochProgress], None]] = None) -> Trainer:
    """The trainer of ``cfg.method``: what every caller builds, so the method is never silently fine-tuning."""
    check_method(cfg.method)
    return METHODS[cfg.method](cfg, stream, device, log, on_epoch)


def registered_names() -> str:
    """The shipped benchmarks, models and methods, for ``--help``: the registries themselves, never a copy."""
    from .benchmarks import BENCHMARKS
    from .models import MODELS

    return (f"benchmarks: {', '.join(BENCHMARKS)}\nmodels: {', '.join(MODELS)}\nmethods: {', '.join(METHODS)}\n"
            "(benchmark= and model= also take an import path module:function: see the README)")
