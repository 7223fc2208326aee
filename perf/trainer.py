"""Trainer speed and memory, measured side by side in one run; prints tables for docs/performance.md.

    python perf/trainer.py [--epochs 5] [--device auto] [--cases mlp,alexnet,cnn1d]
                           [--sections epoch,subspaces,statistics,memory,evaluation]

1. ``epoch``: epoch time of a task under every method against a fine-tuning task (same model, data and task;
   NESS's target ≤ 1.15×).
2. ``subspaces``: building the subspaces, one forward pass for all adapted layers against one pass per layer.
3. ``statistics``: ``replay`` against ``stream`` statistics as the number of tasks grows: time at the last
   task, and the memory each keeps between tasks (old inputs plus Gram matrices, against Gram matrices alone).
4. ``memory``: peak memory of ``replay`` against ``stream`` at task 10. (a) The statistics step before
   task 10, as the peak above the memory in use when it starts: on CPU the largest process RSS, sampled
   every millisecond, minus the RSS at the start; on CUDA ``max_memory_allocated`` minus the allocated
   bytes at the start. (b) The whole process through a full 10-task run (one epoch per task), each mode
   in a fresh interpreter: peak RSS (VmHWM) and, on CUDA, ``max_memory_allocated``.
5. ``evaluation``: one whole run with the evaluation after every task timed by split: what evaluating every seen
   task's validation split, as well as its test split, adds to a run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from statistics import median
from typing import Callable, Dict, List, Optional

import torch

from ness_sweep import statistics
from ness_sweep.benchmarks.digits import permuted_digits
from ness_sweep.benchmarks.mnist1d import permuted_mnist1d
from ness_sweep.config import RunConfig
from ness_sweep.data import Task, TaskStream
from ness_sweep.methods import METHODS, load_run_config, make_trainer
from ness_sweep.metrics import TEST, VALID
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
    trainer = make_trainer(cfg, stream, device=device, log=None)
    trainer.run(until=1)
    return trainer


def task_two_epochs(trainers: Dict[str, Trainer], epochs: int, device: torch.device) -> Dict[str, float]:
    """Median seconds per epoch of task 2 (train + validation) for each trainer, after one warm-up epoch each.
    Task 2 starts through the method's hooks as ``Trainer.run`` starts it, and each ``train_loop`` is one epoch
    (``trainer_after_first_task`` sets train.epochs=1). The timed epochs take turns across the trainers, so
    that drift in the machine's load or clocks falls on every method alike."""
    params = {}
    for name, trainer in trainers.items():
        trainer.method.before_task(1)
        params[name] = trainer.train_only(trainer.method.trainable_parameters(1))
        trainer.train_loop(1, params[name])  # warm-up
    times: Dict[str, List[float]] = {name: [] for name in trainers}
    for _ in range(epochs):
        for name, trainer in trainers.items():
            times[name].append(timed(lambda: trainer.train_loop(1, params[name]), device))
    return {name: median(seconds) for name, seconds in times.items()}


# Every method trains with the same train.* settings, ones that GPM and SGP accept: they refuse Adam and weight
# decay, whose updates would leave their projections.
EPOCH_SETTINGS = ["train.optimizer=sgd", "train.weight_decay=0"]
# At the default λ = 100, EWC's penalty diverges on the random-label AlexNet (lr · λ · max F ≈ 8 > 2 (1 +
# momentum)) and a loss that is not finite stops the loop; the penalty costs the same at any λ.
METHOD_SETTINGS = {"ewc": ["ewc.lambda=10"]}


def methods_vs_finetune(name: str, stream: TaskStream, overrides: List[str], epochs: int,
                        device: torch.device) -> None:
    """One row per method: its epoch time, relative to fine-tuning's, and what trains in task 2."""
    trainers = {method: trainer_after_first_task(
        stream, [f"method={method}", *EPOCH_SETTINGS, *METHOD_SETTINGS.get(method, []), *overrides], device)
        for method in METHODS}
    seconds = task_two_epochs(trainers, epochs, device)
    samples = len(stream.tasks[1].y_train)
    for method, trainer in trainers.items():
        s = seconds[method]
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(f"| {name} | {device.type} | {method} | {s:.3f} | {s / seconds['finetune']:.2f}x "
              f"| {samples / s:,.0f} | {trainable:,} |", flush=True)


def one_pass_vs_per_layer(name: str, stream: TaskStream, overrides: List[str], device: torch.device) -> None:
    trainer = trainer_after_first_task(stream, overrides, device)
    layers = statistics.adaptable_layers(trainer.model)
    body = trainer.model.body
    passes = []
    handle = body.register_forward_hook(lambda *args: passes.append(1))

    def inputs():
        return statistics.training_inputs(trainer.stream.tasks[:1], trainer.cfg.train.eval_batch_size)

    def one_pass():
        statistics.collect_grams(body, layers, inputs())

    def per_layer():
        for layer_name, layer in layers.items():
            statistics.collect_grams(body, {layer_name: layer}, inputs())

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
        layers = statistics.adaptable_layers(trainer.model)
        body = trainer.model.body
        # Before task T, replay runs all T-1 previous tasks' inputs; stream adds only the task just finished.
        def inputs(first: int):
            return statistics.training_inputs(trainer.stream.tasks[first:tasks - 1], trainer.cfg.train.eval_batch_size)

        replay_s = timed(lambda: statistics.collect_grams(body, layers, inputs(0)), device)
        grams: Dict[str, torch.Tensor] = {}
        stream_s = timed(lambda: grams.update(statistics.collect_grams(body, layers, inputs(tasks - 2))), device)
        gram_bytes = tensor_bytes(grams.values())
        kept_inputs = tensor_bytes(t.x_train for t in stream.tasks[:tasks - 1])
        print(f"| {name} | {tasks} | {replay_s:.3f} | {stream_s:.3f} | {(kept_inputs + gram_bytes) / 2**20:.2f} "
              f"| {gram_bytes / 2**20:.2f} |")


MEMORY_TASKS = 10
CIFAR_OVERRIDES = ["model=alexnet", "train.batch_size=64"]
MEMORY_CASES = {  # --cases name: (label, stream of MEMORY_TASKS tasks, overrides); the child rebuilds a case by name
    "mlp": ("MLP, permuted digits", lambda: permuted_digits(None, 0, 0.1, num_tasks=MEMORY_TASKS), []),
    "alexnet": ("AlexNet, 32x32x3 (2,500 images/task)", lambda: random_image_stream(MEMORY_TASKS, 2500),
                CIFAR_OVERRIDES),
}
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident memory of this process now (second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def release_freed_heap() -> None:
    """Hand glibc's freed-but-cached pages back to the OS, so that the RSS at a step's start is memory in use
    and pages the step takes count as growth instead of hiding in the allocator's cache."""
    ctypes.CDLL(None).malloc_trim(0)


def cpu_step_peak_bytes(step: Callable[[], object]) -> int:
    """Largest RSS while ``step`` runs minus the RSS at its start, sampled every ~1 ms from a thread
    (torch's kernels release the GIL, so the sampler runs while they allocate)."""
    release_freed_heap()
    start = rss_bytes()
    peak = start
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.001):
            peak = max(peak, rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        step()
    finally:
        done.set()
        sampler.join()
    return max(peak, rss_bytes()) - start


def cuda_step_peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Largest allocated CUDA memory while ``step`` runs minus what was allocated at its start."""
    sync(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - start


def statistics_step(trainer: Trainer, memory: str) -> Callable[[], object]:
    """NESS's own statistics work for the last task: replay runs every earlier task's inputs through the
    network in ``before_task`` (``Ness.grams``); stream adds only the task just finished to its running sum in
    ``after_task`` (nothing to merge after the first task, so ``after_task`` is the statistics alone)."""
    last = trainer.num_tasks - 1
    if memory == "replay":
        return lambda: trainer.method.grams(trainer.stream.tasks[:last])
    return lambda: trainer.method.after_task(last - 1)


def step_peak_mib(case: str, memory: str, device: torch.device) -> float:
    """Peak of the statistics step before the last task, above the memory in use when it starts. The
    trainer has finished task 1 only: the step's tensors have the same shapes as after task 9, and a
    stream trainer already holds a running sum of the same size."""
    _, make_stream, overrides = MEMORY_CASES[case]
    trainer = trainer_after_first_task(make_stream(), ["method=ness", f"ness.memory={memory}", *overrides], device)
    step = statistics_step(trainer, memory)
    peak = cuda_step_peak_bytes(step, device) if device.type == "cuda" else cpu_step_peak_bytes(step)
    return peak / 2**20


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak into a child across
    fork and exec, so a child's ru_maxrss would report this script's own peak whenever that is larger."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def peak_child(case: str, memory: str, device: torch.device) -> None:
    """In a fresh interpreter: the full run, one epoch per task; prints its peaks as JSON."""
    _, make_stream, overrides = MEMORY_CASES[case]
    cfg = load_run_config(["train.epochs=1", "method=ness", f"ness.memory={memory}", *overrides])
    make_trainer(cfg, make_stream(), device, log=None).run()
    cuda_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    print(json.dumps({"rss_bytes": peak_rss_bytes(), "cuda_bytes": cuda_bytes}))


def run_peaks_mib(case: str, memory: str, device: torch.device) -> Dict[str, Optional[float]]:
    """Whole-process peaks of a full run in a fresh interpreter, so nothing this script did before counts."""
    child = subprocess.run([sys.executable, __file__, "--peak-child", case, memory, "--device", str(device)],
                           check=True, stdout=subprocess.PIPE, text=True)  # stderr passes through
    peaks = json.loads(child.stdout.splitlines()[-1])
    return {k: None if v is None else v / 2**20 for k, v in peaks.items()}


def ratio(a: Optional[float], b: Optional[float]) -> str:
    """replay / stream; n/a where a mode has no figure (CUDA peaks on a CPU run)."""
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


def mib(value: Optional[float]) -> str:
    """A table cell; n/a where there is no figure (CUDA peaks on a CPU run)."""
    return "n/a" if value is None else f"{value:.1f}"


def replay_vs_stream_peaks(case: str, device: torch.device) -> None:
    """One row per memory mode and one of replay / stream ratios."""
    label = MEMORY_CASES[case][0]
    peaks = {}
    for memory in ("replay", "stream"):
        peaks[memory] = {"step": step_peak_mib(case, memory, device), **run_peaks_mib(case, memory, device)}
        p = peaks[memory]
        print(f"| {label} | {MEMORY_TASKS} | {memory} | {mib(p['step'])} | {mib(p['rss_bytes'])} "
              f"| {mib(p['cuda_bytes'])} |", flush=True)
    replay, stream = peaks["replay"], peaks["stream"]
    print(f"| {label} | {MEMORY_TASKS} | replay / stream | " + " | ".join(
        ratio(replay[k], stream[k]) for k in ("step", "rss_bytes", "cuda_bytes")) + " |", flush=True)


def mnist1d_stream() -> TaskStream:
    """Permuted MNIST-1D (3,600 training signals per task) from the default data_root, generated there once."""
    return permuted_mnist1d(Path(RunConfig.data_root).expanduser(), 0, 0.1)


def model_cases(cases: List[str], digits: TaskStream):
    """(name, stream, overrides) of each chosen case, its stream made only when chosen."""
    if "mlp" in cases:
        yield "MLP 64-256-256, permuted digits", digits, []
    if "alexnet" in cases:
        yield "AlexNet, 32x32x3 (2,500 images/task)", random_image_stream(3, 2500), CIFAR_OVERRIDES
    if "cnn1d" in cases:
        yield "CNN-1D, permuted MNIST-1D (3,600 signals/task)", mnist1d_stream(), ["model=cnn1d"]


def epoch_section(cases: List[str], digits: TaskStream, epochs: int, device: torch.device) -> None:
    print("\n## Epoch time: every method's task vs a fine-tuning task (task 2, median of timed epochs; "
          "NESS's target ≤ 1.15x)")
    print("| case | device | method | s/epoch | / fine-tune | samples/s | trainable params |")
    print("|---|---|---|---|---|---|---|")
    for name, stream, overrides in model_cases(cases, digits):
        methods_vs_finetune(name, stream, overrides, epochs, device)


def subspaces_section(cases: List[str], digits: TaskStream, device: torch.device) -> None:
    print("\n## Subspaces: one forward pass for all layers vs one pass per layer (task 1's inputs)")
    print("| case | adapted layers | forward passes, one-pass | forward passes, per-layer | fewer passes "
          "| one-pass s | per-layer s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    if "mlp" in cases:
        one_pass_vs_per_layer("MLP, permuted digits", digits, [], device)
    if "alexnet" in cases:
        one_pass_vs_per_layer("AlexNet, 32x32x3", random_image_stream(2, 2500), CIFAR_OVERRIDES, device)


def statistics_section(cases: List[str], device: torch.device) -> None:
    print("\n## Statistics before task T: replay vs stream")
    print("| case | T | replay s | stream s | replay keeps MiB (inputs + Gram) | stream keeps MiB (Gram) |")
    print("|---|---|---|---|---|---|")
    if "mlp" in cases:
        replay_vs_stream("MLP, permuted digits", lambda t: permuted_digits(None, 0, 0.1, num_tasks=t), [2, 5, 10, 20],
                         [], device)
    if "alexnet" in cases:
        replay_vs_stream("AlexNet, 32x32x3 (2,500 images/task)", lambda t: random_image_stream(t, 2500), [2, 5, 10],
                         CIFAR_OVERRIDES, device)


def memory_section(cases: List[str], device: torch.device) -> None:
    print(f"\n## Peak memory at task {MEMORY_TASKS}: replay vs stream")
    print("| case | T | memory | stats-step peak MiB above start | run peak RSS MiB | run peak CUDA MiB |")
    print("|---|---|---|---|---|---|")
    for case in ("mlp", "alexnet"):
        if case in cases:
            replay_vs_stream_peaks(case, device)


def evaluation_costs(name: str, stream: TaskStream, overrides: List[str], epochs: int, device: torch.device) -> None:
    """One whole NESS run, with every evaluation after a task timed by split: what evaluating the validation
    splits as well as the test splits adds to a run."""
    cfg = load_run_config(["method=ness", f"train.epochs={epochs}", *overrides])
    trainer = make_trainer(cfg, stream, device=device, log=None)
    spent = {TEST: 0.0, VALID: 0.0}
    evaluate = trainer.accuracy

    def timed_accuracy(task, t, split=TEST):
        sync(device)
        start = time.perf_counter()
        value = evaluate(task, t, split)
        sync(device)
        spent[split] += time.perf_counter() - start
        return value

    trainer.accuracy = timed_accuracy
    total = timed(trainer.run, device)
    print(f"| {name} | {device.type} | {len(stream.tasks)} | {total:.2f} | {spent[TEST]:.3f} | {spent[VALID]:.3f} "
          f"| {100 * spent[VALID] / total:.1f}% |")


def evaluation_section(cases: List[str], digits: TaskStream, epochs: int, device: torch.device) -> None:
    print(f"\n## Evaluation after every task: test and validation splits ({epochs} epochs per task, NESS, one run)")
    print("| case | device | tasks | run s | test evaluation s | validation evaluation s "
          "| validation share of the run |")
    print("|---|---|---|---|---|---|---|")
    for name, stream, overrides in model_cases(cases, digits):
        evaluation_costs(name, stream, overrides, epochs, device)


SECTIONS = ("epoch", "subspaces", "statistics", "memory", "evaluation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per method")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", default="mlp,alexnet,cnn1d", help="comma-separated: mlp, alexnet, cnn1d")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument("--peak-child", nargs=2, metavar=("CASE", "MEMORY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = pick_device(args.device)
    if args.peak_child:
        peak_child(*args.peak_child, device)
        return
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))} (choose from {', '.join(SECTIONS)})")
    torch.manual_seed(0)
    cases = args.cases.split(",")
    digits = permuted_digits(None, 0, 0.1, num_tasks=5)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    if "epoch" in sections:
        epoch_section(cases, digits, args.epochs, device)
    if "subspaces" in sections:
        subspaces_section(cases, digits, device)
    if "statistics" in sections:
        statistics_section(cases, device)
    if "memory" in sections:
        memory_section(cases, device)
    if "evaluation" in sections:
        evaluation_section(cases, digits, args.epochs, device)


if __name__ == "__main__":
    main()
