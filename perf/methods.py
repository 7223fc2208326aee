"""The six methods side by side on the embedded streams: each baseline's defaults chosen on validation data,
then every method at its defaults on the test split over several seeds; prints tables for docs/concepts/methods.md.

    python perf/methods.py [--section compare] [--seeds 0,1,2] [--methods finetune,ness,gpm,sgp,ewc,lwf]
                           [--benchmarks permuted_digits,split_mnist1d] [--epochs N] [--threads 1] [--device cpu]
    python perf/methods.py --section select [--seeds 0] [--methods ...] [--benchmarks ...] [--epochs N]

Benchmarks: ``permuted_digits`` with ``model=mlp`` and ``split_mnist1d`` with its default model (cnn1d).
Every run trains with the config's defaults (``train.*``) unless ``--epochs`` says otherwise; each table's
header states the settings it ran with.

1. ``select``: each method's key setting over a small grid (``GRIDS``: ``ewc.lambda``, ``lwf.lambda`` ×
   ``lwf.temperature``, ``gpm.threshold``, ``sgp.scale``; NESS and fine-tuning at their defaults, as
   reference rows), seed 0 (``--seeds 0,1,2``: the mean over the seeds decides), scored on VALIDATION data:
   every task's test split is replaced by its validation split (``dataclasses.replace(task, x_test=task.x_valid,
   y_test=task.y_valid)``). The trainer evaluates the accuracy matrix R on the test split, so this makes every
   number of R, hence ACC, BWT and forgetting, a validation number, and the choice never sees a test sample.
   (The trainer also reads the current task's validation loss for its lr schedule and early stopping, as it
   always does; the test data stays untouched either way.) Per method and benchmark the value with the best
   validation ACC is marked; BWT is shown beside it, since a setting can buy ACC with forgetting. The header
   gives the validation split's size: with ~80 to 135 samples per task, one seed cannot separate settings
   within about a point of ACC, so close calls need ``--seeds 0,1,2``.
2. ``compare`` (the default): every method at its defaults on the TEST split, one run per seed (default 0, 1,
   2): ACC and BWT as mean ± sample std over the seeds, and the median of the runs' ``seconds`` (the
   trainer's own clock: training, the method's statistics and evaluation, no data loading). Threads are
   pinned (``--threads``, default 1) so that timings compare; run it on an otherwise idle machine.

A run whose loss diverges (EWC with a large λ, for one) is shown as ``diverged`` rather than ending the script.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ness_sweep.benchmarks import stream_for
from ness_sweep.data import TaskStream
from ness_sweep.methods import METHODS, check_fits, load_run_config, make_trainer
from ness_sweep.methods.gpm import PAPER_STREAMS, default_thresholds
from ness_sweep.metrics import mean_std
from ness_sweep.models import build_model, pick_device
from ness_sweep.statistics import adaptable_layers
from ness_sweep.train import apply_threads

BENCHMARKS: Dict[str, List[str]] = {  # --benchmarks name: the overrides that select its stream and model
    "permuted_digits": ["benchmark=permuted_digits", "model=mlp"],
    "split_mnist1d": ["benchmark=split_mnist1d"],
}


# --section select: per method, the values of its key setting(s) tried; () is the method's defaults alone.
GRIDS: Dict[str, List[Tuple[str, ...]]] = {
    "finetune": [()],
    "ness": [()],
    "ewc": [(f"ewc.lambda={v}",) for v in (1, 10, 100, 1000, 10000)],
    "lwf": [(f"lwf.lambda={lam}", f"lwf.temperature={temp}") for lam in (0.1, 0.3, 1, 3) for temp in (1, 2, 4)],
    "gpm": [("gpm.threshold=null",)] + [(f"gpm.threshold={v}",) for v in (0.9, 0.95, 0.97, 0.99)],
    "sgp": [(f"sgp.scale={v}",) for v in (1, 5, 10, 20)],
}


def progress(line: str) -> None:
    """Progress goes to stderr, so that stdout holds only the tables."""
    print(line, file=sys.stderr, flush=True)


def validation_as_test(stream: TaskStream) -> TaskStream:
    """The stream with every task's test split replaced by its validation split: what the trainer then
    reports as test accuracy is validation accuracy."""
    tasks = [dataclasses.replace(task, x_test=task.x_valid, y_test=task.y_valid) for task in stream.tasks]
    return TaskStream(stream.name, tasks, stream.input_shape, stream.default_model, dict(stream.meta))


def run_once(overrides: Sequence[str], stream: TaskStream, device: torch.device) -> Optional[dict]:
    """One run's result (acc, bwt, forgetting, seconds, diagnostics, ...), or None when its loss diverged."""
    cfg = load_run_config(list(overrides))
    check_fits(cfg, stream)
    try:
        return make_trainer(cfg, stream, device=device, log=None).run().to_dict()
    except FloatingPointError as error:
        progress(f"  diverged: {error}")
        return None


def base_overrides(benchmark: str, seed: int, args: argparse.Namespace) -> List[str]:
    epochs = [f"train.epochs={args.epochs}"] if args.epochs else []
    return [*BENCHMARKS[benchmark], f"seed={seed}", f"threads={args.threads}", f"device={args.device}", *epochs]


def settings_line(args: argparse.Namespace) -> str:
    """The training settings every run of a table shares, for its header."""
    cfg = load_run_config([f"train.epochs={args.epochs}"] if args.epochs else [])
    t = cfg.train
    return (f"train.epochs={t.epochs} (lr_min may stop a task earlier), lr={t.lr}, batch_size={t.batch_size}, "
            f"{t.optimizer} momentum={t.momentum}, valid_fraction={t.valid_fraction}; threads={args.threads}")


def setting_label(method: str, overrides: Tuple[str, ...], benchmark: str, stream: TaskStream) -> str:
    """The grid point as a table cell; GPM's ``null`` threshold shows the paper values it stands for."""
    if not overrides:
        return "defaults"
    label = ", ".join(o.split(".", 1)[1] for o in overrides)
    if method == "gpm" and overrides == ("gpm.threshold=null",):
        layers = len(adaptable_layers(build_model(load_run_config(BENCHMARKS[benchmark]).model, stream)))
        values = "/".join(f"{v:g}" for v in default_thresholds(benchmark, layers, 0))
        source = "paper" if benchmark in PAPER_STREAMS else "chosen on validation data"
        label += f" ({source}: {values} per layer)"
    return label


def default_label(method: str) -> str:
    """The method's current defaults of the keys its grid varies."""
    grid = GRIDS[method]
    if grid == [()]:
        return "defaults"
    cfg = load_run_config([f"method={method}"])
    keys = [o.split("=", 1)[0] for o in grid[0]]
    values = {key: cfg[key.split(".")[0]][key.split(".")[1]] for key in keys}
    return ", ".join(f"{key.split('.', 1)[1]}={'null' if v is None else v}" for key, v in values.items())


def cell(value: Optional[float]) -> str:
    """Two decimals, no "-0.00"; "diverged" for a run whose loss diverged."""
    return "diverged" if value is None else f"{value + 0.0 if round(value, 2) else 0.0:.2f}"


def mean_of_seeds(results: List[Optional[dict]]) -> Optional[dict]:
    """ACC, BWT and forgetting averaged over the seeds' runs and their median seconds; None if any diverged."""
    if not results or any(r is None for r in results):
        return None
    summary = {key: statistics.fmean(r[key] for r in results) for key in ("acc", "bwt", "forgetting")}
    return {**summary, "seconds": statistics.median(r["seconds"] for r in results)}


def select_section(args: argparse.Namespace, methods: List[str], benchmarks: List[str], seeds: List[int],
                   device: torch.device) -> None:
    chosen: Dict[Tuple[str, str], Tuple[str, dict]] = {}
    for benchmark in benchmarks:
        streams = {seed: validation_as_test(stream_for(load_run_config(base_overrides(benchmark, seed, args)), seed))
                   for seed in seeds}
        some = streams[seeds[0]]
        seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over seeds {', '.join(map(str, seeds))}"
        print(f"\n## Selection on validation data: {benchmark} ({' '.join(BENCHMARKS[benchmark])}), {seed_text}")
        sizes = [len(task.y_test) for task in some.tasks]
        print(f"{settings_line(args)}. ACC, BWT, forgetting: % on the validation splits ({min(sizes)} to "
              f"{max(sizes)} samples per task: one sample is {100 / min(sizes):.2f} points of a task's accuracy, "
              f"about {100 / min(sizes) / len(sizes):.2f} of ACC). **best**: the highest validation ACC of the "
              "method (ties: the better BWT). seconds: the run's own clock (median over seeds).")
        print("| method | setting | valid ACC | valid BWT | valid forgetting | seconds | |")
        print("|---|---|---|---|---|---|---|", flush=True)
        for method in methods:
            rows = []
            for overrides in GRIDS[method]:
                label = setting_label(method, overrides, benchmark, some)
                results = []
                for seed in seeds:
                    progress(f"{benchmark} {method} {label} seed {seed}")
                    started = time.perf_counter()
                    result = run_once(base_overrides(benchmark, seed, args) + [f"method={method}", *overrides],
                                      streams[seed], device)
                    progress(f"  {time.perf_counter() - started:.1f} s: " + (
                        "diverged" if result is None else f"ACC {result['acc']:.2f} BWT {result['bwt']:.2f}"))
                    results.append(result)
                rows.append((label, mean_of_seeds(results)))
            finished = [(label, r) for label, r in rows if r is not None]
            best = max(finished, key=lambda row: (row[1]["acc"], row[1]["bwt"]))[0] if finished else None
            if best is not None:
                chosen[(benchmark, method)] = (best, dict(finished)[best])
            for label, r in rows:
                mark = "**best**" if len(rows) > 1 and label == best else ""
                print(f"| {method} | {label} | {cell(r and r['acc'])} | {cell(r and r['bwt'])} "
                      f"| {cell(r and r['forgetting'])} | {cell(r and r['seconds'])} | {mark} |", flush=True)
    tuned = [m for m in methods if len(GRIDS[m]) > 1]
    if not tuned:
        return
    print("\n## Best value per method and benchmark (validation ACC / BWT), against the current default")
    print("| method | current default | " + " | ".join(benchmarks) + " |")
    print("|---|---|" + "---|" * len(benchmarks))
    for method in tuned:
        cells = []
        for benchmark in benchmarks:
            label, r = chosen.get((benchmark, method), ("diverged", None))
            cells.append(label if r is None else f"{label}: {r['acc']:.2f} / {r['bwt']:.2f}")
        print(f"| {method} | {default_label(method)} | " + " | ".join(cells) + " |", flush=True)


def compare_section(args: argparse.Namespace, methods: List[str], benchmarks: List[str], seeds: List[int],
                    device: torch.device) -> None:
    for benchmark in benchmarks:
        streams = {seed: stream_for(load_run_config(base_overrides(benchmark, seed, args)), seed) for seed in seeds}
        print(f"\n## Methods at their defaults: {benchmark} ({' '.join(BENCHMARKS[benchmark])}), test split")
        print(f"{settings_line(args)}; device {device}. Seeds {', '.join(map(str, seeds))}: mean ± sample std; "
              "seconds: the median over the seeds of a run's training, statistics and evaluation time.")
        print("| method | ACC | BWT | forgetting | seconds / run | diverged |")
        print("|---|---|---|---|---|---|", flush=True)
        for method in methods:
            results = []
            for seed in seeds:
                progress(f"{benchmark} {method} seed {seed}")
                results.append(run_once(base_overrides(benchmark, seed, args) + [f"method={method}"], streams[seed],
                                        device))
            done = [r for r in results if r is not None]
            if not done:
                print(f"| {method} | - | - | - | - | {len(results)}/{len(results)} |", flush=True)
                continue
            stats = {key: mean_std([r[key] for r in done]) for key in ("acc", "bwt", "forgetting")}
            seconds = statistics.median(r["seconds"] for r in done)
            print(f"| {method} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in stats.values())
                  + f" | {seconds:.1f} | {len(results) - len(done)}/{len(results)} |", flush=True)


SECTIONS = ("compare", "select")
DEFAULT_SEEDS = {"compare": "0,1,2", "select": "0"}


def names(value: str, allowed: Sequence[str], what: str, parser: argparse.ArgumentParser,
          import_paths: bool = False) -> List[str]:
    chosen = [v for v in value.split(",") if v]
    unknown = [v for v in chosen if v not in allowed and not (import_paths and ":" in v)]
    if unknown or not chosen:
        parser.error(f"unknown {what}: {', '.join(unknown) or '(none given)'} (choose from {', '.join(allowed)})")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", default="compare", choices=SECTIONS)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS)
                        + " (compare also takes a user's module:Class, e.g. my_method:L2Pull with "
                          "PYTHONPATH=examples)")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated: " + ", ".join(BENCHMARKS))
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1,2 for compare, 0 for "
                                                      "select; several seeds in select: their mean decides)")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the config's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the runs' threads setting)")
    parser.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N")
    args = parser.parse_args()
    methods = names(args.methods, list(METHODS), "methods", parser, import_paths=args.section == "compare")
    benchmarks = names(args.benchmarks, list(BENCHMARKS), "benchmarks", parser)
    try:
        seeds = [int(s) for s in (args.seeds or DEFAULT_SEEDS[args.section]).split(",") if s]
    except ValueError:
        seeds = []
    if not seeds:
        parser.error(f"--seeds {args.seeds}: expected comma-separated integers")
    apply_threads(args.threads)
    device = pick_device(args.device)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.section == "select":
        select_section(args, methods, benchmarks, seeds, device)
    else:
        compare_section(args, methods, benchmarks, seeds, device)


if __name__ == "__main__":
    main()
