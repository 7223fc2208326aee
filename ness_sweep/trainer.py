"""The continual loop: for each task, pre-train (fit subspaces), train, post-train (merge), evaluate.

Task 0 trains the whole network. With ``method=ness`` every later task trains only the adapters' A
matrices and its own head (batch-norm affine parameters stay as task 0 left them); with
``method=finetune`` every later task trains everything, the forgetting baseline. After each task the
trainer evaluates all seen tasks and hands a ``TaskResult`` to the caller, the place where the sweep
reports and checkpoints; ``state_dict`` / ``load_state_dict`` are valid there.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import metrics, ness
from .data import Task, TaskStream, seed_everything
from .models import build_model, pick_device

EVAL_BATCH_SIZE = 256  # evaluation and statistics batches: larger than training's, same results


@dataclass
class TaskResult:
    task: int  # tasks finished so far (1..T)
    row: List[float]  # test accuracy (%) on tasks 0..task-1 now
    acc_seen: float
    ranks: Dict[str, int]
    trainable_params: int
    seconds: float
    final: Optional[Dict[str, float]] = None  # acc, bwt, forgetting after the last task


@dataclass
class RunResult:
    acc_matrix: List[List[Optional[float]]]
    ranks: List[Dict[str, int]]
    trainable_params: List[int]
    seconds: float
    extra: Dict[str, object] = field(default_factory=dict)

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
            **self.extra,
        }


def square_matrix(rows: List[List[float]], size: int) -> List[List[Optional[float]]]:
    """Pad row i (i+1 entries) with None above the diagonal."""
    return [list(row) + [None] * (size - len(row)) for row in rows]


class Trainer:
    def __init__(self, cfg, stream: TaskStream, device: Optional[torch.device] = None,
                 log: Optional[Callable[[str], None]] = print):
        seed_everything(cfg.seed)
        self.cfg = cfg
        self.device = device or pick_device(cfg.device)
        self.stream = stream.to(self.device)
        self.model = build_model(cfg.model, stream).to(self.device)
        self.log = log or (lambda message: None)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.next_task = 0
        self.rows: List[List[float]] = []
        self.ranks: List[Dict[str, int]] = []
        self.trainable_params: List[int] = []
        self.seconds = 0.0
        self.stream_grams: Dict[str, Tensor] = {}  # ness.memory=stream: Σ of finished tasks' Gram matrices

    @property
    def num_tasks(self) -> int:
        return len(self.stream.tasks)

    def run(self, on_task_end: Optional[Callable[[TaskResult], None]] = None,
            until: Optional[int] = None) -> RunResult:
        """Train the remaining tasks (or up to task ``until``, counted from 1), evaluating after each."""
        for t in range(self.next_task, until or self.num_tasks):
            started = time.perf_counter()
            ranks = self.pre_train(t)
            params = self.trainable_parameters(t)
            self.train_loop(t, params)
            self.post_train(t)
            row = [self.accuracy(self.stream.tasks[j], j) for j in range(t + 1)]
            self.seconds += time.perf_counter() - started
            self.rows.append(row)
            self.ranks.append(ranks)
            self.trainable_params.append(sum(p.numel() for p in params))
            self.next_task = t + 1
            self.log(f"task {t + 1}/{self.num_tasks} done: accuracy on seen tasks "
                     + " ".join(f"{a:.1f}" for a in row) + f" (mean {metrics.seen_accuracy(row):.2f})")
            if on_task_end is not None:
                on_task_end(self.task_result())
        return self.result()

    # ---- pre-train: subspaces and adapters -------------------------------------------------
    def pre_train(self, t: int) -> Dict[str, int]:
        """Attach adapters for tasks after the first (method=ness); returns the rank per layer."""
        if t == 0 or self.cfg.method != "ness":
            return {}
        n = self.cfg.ness
        grams = self.stream_grams if n.memory == "stream" else self.replay_grams(t)
        bases, _ = ness.subspace_bases(grams, n.threshold, n.norm, n.rank)
        ness.attach_adapters(self.model, bases)
        ranks = {name: int(b.shape[1]) for name, b in bases.items()}
        self.log(f"task {t + 1}/{self.num_tasks}: null-space ranks " + ", ".join(f"{k}={v}" for k, v in ranks.items()))
        return ranks

    def task_inputs(self, tasks: List[Task]):
        """Training inputs of the given tasks, batch by batch, normalised on the device (slices of the
        stored tensors: no index tensor crosses from the host)."""
        for task in tasks:
            for x in task.x_train.split(EVAL_BATCH_SIZE):
                yield task.inputs(x)

    def replay_grams(self, t: int) -> Dict[str, Tensor]:
        """The paper's statistics: all previous tasks' inputs through the current network, one pass."""
        layers = ness.adaptable_layers(self.model)
        return ness.collect_grams(self.model.body, layers, self.task_inputs(self.stream.tasks[:t]))

    def trainable_parameters(self, t: int) -> List[nn.Parameter]:
        """Everything on task 0 and under fine-tuning; only A and the task's head under NESS."""
        model = self.model
        for p in model.parameters():
            p.requires_grad_(False)
        if t == 0 or self.cfg.method != "ness":
            trainable = list(model.body.parameters())
        else:
            trainable = [m.A for m in model.body.modules() if isinstance(m, ness.NullSpaceAdapter) and m.rank > 0]
        trainable += list(model.heads[t].parameters())
        for p in trainable:
            p.requires_grad_(True)
        return trainable

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
            self.log(f"task {t + 1}/{self.num_tasks} epoch {epoch}/{tc.epochs} "
                     f"loss {train_loss:.4f} valid {valid_loss:.4f} lr {lr:.2g}")
            if lr < tc.lr_min:
                break
        with torch.no_grad():
            for p, value in zip(params, best):
                p.copy_(value)

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

    # ---- post-train: merge and statistics -------------------------------------------------
    def post_train(self, t: int) -> None:
        """Merge W ← W + A Bᵀ; with stream memory, add this task's Gram matrices once."""
        ness.merge_adapters(self.model)
        if self.cfg.method == "ness" and self.cfg.ness.memory == "stream" and t + 1 < self.num_tasks:
            layers = ness.adaptable_layers(self.model)
            grams = ness.collect_grams(self.model.body, layers, self.task_inputs([self.stream.tasks[t]]))
            for name, g in grams.items():
                self.stream_grams[name] = g if name not in self.stream_grams else self.stream_grams[name] + g

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
    def task_result(self) -> TaskResult:
        row = self.rows[-1]
        final = None
        if self.next_task == self.num_tasks:
            d = self.result().to_dict()
            final = {k: d[k] for k in ("acc", "bwt", "forgetting")}
        return TaskResult(self.next_task, row, metrics.seen_accuracy(row), self.ranks[-1],
                          self.trainable_params[-1], self.seconds, final)

    def result(self) -> RunResult:
        return RunResult(square_matrix(self.rows, self.num_tasks), list(self.ranks),
                         list(self.trainable_params), self.seconds)

    def state_dict(self) -> dict:
        """Everything needed to continue from the next task: weights (merged), statistics, rows, RNGs.
        Every tensor is on the CPU, so a checkpoint loads on any machine, with or without CUDA."""
        return {
            "next_task": self.next_task,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "rows": [list(r) for r in self.rows],
            "ranks": [dict(r) for r in self.ranks],
            "trainable_params": list(self.trainable_params),
            "seconds": self.seconds,
            "stream_grams": {k: v.cpu() for k, v in self.stream_grams.items()},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "shuffle": self.shuffle.get_state(),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.next_task = state["next_task"]
        self.rows = [list(r) for r in state["rows"]]
        self.ranks = [dict(r) for r in state["ranks"]]
        self.trainable_params = list(state["trainable_params"])
        self.seconds = state["seconds"]
        self.stream_grams = {k: v.to(self.device) for k, v in state["stream_grams"].items()}
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and self.device.type == "cuda":  # a CPU trainer has no use for it
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.shuffle.set_state(rng["shuffle"])
