"""Trainer speed and memory, measured side by side in one run; prints tables for the README.

    python perf/trainer.py [--epochs 5] [--device auto] [--cases mlp,alexnet]

1. Epoch time of a NESS task against a fine-tuning task (same model, data and task; target ≤ 1.15×).
2. Building the subspaces: one forward pass for all adapted layers against one pass per layer.
3. ``replay`` against ``stream`` statistics as the number of tasks grows: time at the last task, and
   the memory each keeps between tasks (old inputs plus Gram matrices, against Gram matrices alone).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch

from ness_sweep import ness
from ness_sweep.config import load_run_config
from ness_sweep.data import Task, TaskStream, permuted_digits
from ness_sweep.models import pick_device
from ness_sweep.trainer import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def random_image_stream(tasks: int, per_task: int, shape=(3, 32, 32), classes: int = 10) -> TaskStream:
    """CIFAR-shaped uint8 images with random labels: timing needs the shapes, not the content."""
    g = torch.Generator().manual_seed(0)

    def images(n):
        return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)

    def labels(n):
        return torch.randint(0, classes, (n,), generator=g)

    mean, std = torch.full((shape[0],), 0.5), torch.full((shape[0],), 0.25)
    return TaskStream("random_images", [
        Task(f"random {t}", classes, images(per_task), labels(per_task), images(per_task // 10), labels(per_task // 10),
             images(per_task // 10), labels(per_task // 10), mean, std) for t in range(tasks)], shape, "alexnet")


def trainer_after_first_task(stream: TaskStream, overrides: List[str], device: torch.device) -> Trainer:
    cfg = load_run_config(["train.epochs=1", *overrides])
    trainer = Trainer(cfg, stream, device=device, log=None)
    trainer.run(until=1)
    return trainer


def epoch_seconds(trainer: Trainer, epochs: int, device: torch.device) -> float:
    """Median seconds per epoch of task 2 (train + validation), after one warm-up epoch."""
    trainer.pre_train(1)
    params = trainer.trainable_parameters(1)
    trainer.cfg.train.epochs = 1
    trainer.train_loop(1, params)  # warm-up
    times = [timed(lambda: trainer.train_loop(1, params), device) for _ in range(epochs)]
    return statistics.median(times)


def ness_vs_finetune(name: str, stream: TaskStream, overrides: List[str], epochs: int, device: torch.device) -> None:
    ness_trainer = trainer_after_first_task(stream, ["method=ness", *overrides], device)
    finetune_trainer = trainer_after_first_task(stream, ["method=finetune", *overrides], device)
    ness_s = epoch_seconds(ness_trainer, epochs, device)
    finetune_s = epoch_seconds(finetune_trainer, epochs, device)
    samples = len(stream.tasks[1].y_train)
    ranks = {k: m.rank for k, m in ness_trainer.model.body.named_modules() if isinstance(m, ness.NullSpaceAdapter)}
    print(f"| {name} | {device.type} | {finetune_s:.3f} | {ness_s:.3f} | {ness_s / finetune_s:.2f}x "
          f"| {samples / finetune_s:,.0f} | {samples / ness_s:,.0f} | {sum(ranks.values())} |")


def one_pass_vs_per_layer(name: str, stream: TaskStream, overrides: List[str], device: torch.device) -> None:
    trainer = trainer_after_first_task(stream, overrides, device)
    layers = ness.adaptable_layers(trainer.model)
    body = trainer.model.body
    passes = []
    handle = body.register_forward_hook(lambda *args: passes.append(1))

    def one_pass():
        ness.collect_grams(body, layers, trainer.task_inputs(stream.tasks[:1]))

    def per_layer():
        for layer_name, layer in layers.items():
            ness.collect_grams(body, {layer_name: layer}, trainer.task_inputs(stream.tasks[:1]))

    one_pass()  # warm-up
    passes.clear()
    one_s = timed(one_pass, device)
    one_passes = len(passes)
    passes.clear()
    per_s = timed(per_layer, device)
    per_passes = len(passes)
    handle.remove()
    print(f"| {name} | {len(layers)} | {one_passes} | {per_passes} | {per_passes / one_passes:.0f}x "
          f"| {one_s:.3f} | {per_s:.3f} | {per_s / one_s:.2f}x |")


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def replay_vs_stream(name: str, make_stream: Callable[[int], TaskStream], task_counts: List[int],
                     overrides: List[str], device: torch.device) -> None:
    for tasks in task_counts:
        stream = make_stream(tasks)
        trainer = trainer_after_first_task(stream, overrides, device)
        layers = ness.adaptable_layers(trainer.model)
        body = trainer.model.body
        # Before task T, replay runs all T-1 previous tasks' inputs; stream adds only the task just finished.
        replay_s = timed(lambda: ness.collect_grams(body, layers, trainer.task_inputs(stream.tasks[:tasks - 1])), device)
        grams: Dict[str, torch.Tensor] = {}
        stream_s = timed(lambda: grams.update(ness.collect_grams(body, layers, trainer.task_inputs(stream.tasks[tasks - 2:tasks - 1]))), device)
        gram_bytes = tensor_bytes(grams.values())
        kept_inputs = tensor_bytes(t.x_train for t in stream.tasks[:tasks - 1])
        print(f"| {name} | {tasks} | {replay_s:.3f} | {stream_s:.3f} | {(kept_inputs + gram_bytes) / 2**20:.2f} "
              f"| {gram_bytes / 2**20:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per method")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", default="mlp,alexnet", help="comma-separated: mlp, alexnet")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    cases = args.cases.split(",")

    digits = permuted_digits(None, 0, 0.1, num_tasks=5)
    cifar_overrides = ["model=alexnet", "train.batch_size=64"]
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}\n")

    print("## Epoch time: NESS task vs fine-tuning task (task 2, median of timed epochs)")
    print("| case | device | fine-tune s/epoch | NESS s/epoch | NESS / fine-tune | fine-tune samples/s | NESS samples/s | total rank |")
    print("|---|---|---|---|---|---|---|---|")
    if "mlp" in cases:
        ness_vs_finetune("MLP 64-256-256, permuted digits", digits, [], args.epochs, device)
    if "alexnet" in cases:
        ness_vs_finetune("AlexNet, 32x32x3 (2,500 images/task)", random_image_stream(3, 2500), cifar_overrides,
                         args.epochs, device)

    print("\n## Subspaces: one forward pass for all layers vs one pass per layer (task 1's inputs)")
    print("| case | adapted layers | forward passes, one-pass | forward passes, per-layer | fewer passes "
          "| one-pass s | per-layer s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    if "mlp" in cases:
        one_pass_vs_per_layer("MLP, permuted digits", digits, [], device)
    if "alexnet" in cases:
        one_pass_vs_per_layer("AlexNet, 32x32x3", random_image_stream(2, 2500), cifar_overrides, device)

    print("\n## Statistics before task T: replay vs stream")
    print("| case | T | replay s | stream s | replay keeps MiB (inputs + Gram) | stream keeps MiB (Gram) |")
    print("|---|---|---|---|---|---|")
    if "mlp" in cases:
        replay_vs_stream("MLP, permuted digits", lambda t: permuted_digits(None, 0, 0.1, num_tasks=t), [2, 5, 10, 20],
                         [], device)
    if "alexnet" in cases:
        replay_vs_stream("AlexNet, 32x32x3 (2,500 images/task)", lambda t: random_image_stream(t, 2500), [2, 5, 10],
                         cifar_overrides, device)


if __name__ == "__main__":
    main()
