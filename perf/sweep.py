"""Sweep speed: a Ray Tune sweep against the same trials in a plain Python loop, and Tune's overhead per trial.

    python perf/sweep.py [trials=32] [space=rank_threshold] [key=value ...]
    python perf/sweep.py json_logger [trials=...] [key=value ...]   # only: what Tune's JSON logger costs
    python perf/sweep.py live_progress [trials=...] [key=value ...]   # only: what live progress costs a trial
    python perf/sweep.py scale [trials=300] [key=value ...]   # only: does a trial end cost the same late as early

Runs, in one go and on the same configurations:
  1. the sweep (FIFO, so that every trial trains to the end; 2 trials at a time on 2 CPUs), W&B offline;
  2. the same sweep with W&B disabled;
  3. the first sweep's configurations one after another in a plain loop of ``Trainer.run`` in this process;
  4. the same configurations split over two plain Python processes (no Ray, one thread each): the best
     that two concurrent trials can do on this machine;
  5. the same configurations in the Ray Tune script a user would write by hand (fixed configurations, a report
     after each task, nothing else): what Ray Tune itself costs here, before anything the sweep adds.
Prints a Markdown table for docs/performance.md. Wall times count from the call (data loading, Ray start, Tune,
the table; process start for the two plain processes). Framework overhead per trial is
(sweep wall time - sum of trial compute / concurrency) / trials, with trial compute the trainer's own
time inside each trial. W&B's cost per trial: the two sweeps' wall-time difference over the trials (end to
end, its service's CPU included, but noisy), and, exactly, the driver time spent in the W&B callback.
Each sweep's wall time is also stated against the two plain processes' (the issue's ratio: <= 1.2x at 32 trials).
For the default sweep it also prints where its time goes besides the trials' compute: the driver process's CPU time
(it shares the cores with the trials), and the medians of ``slot_idle``.

``scale`` runs one sweep of many trivial trials (one epoch per task, no confirmation, W&B offline) and prints what
would grow with the trial count if the driver's cost per trial end did: trials per minute over the first and the
last ended trials (from the table's started_at / ended_at), the driver process's CPU (a thread samples it) over
the first and last fifths of the run and its peak RSS, the sweep folder's size per finished trial by part, and the
wall time of ``python -m ness_sweep.report`` and of a resume with nothing left to run.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ness_sweep import environment

environment.bind_ray_to_loopback(None)  # before Ray is imported: loopback only
os.environ.setdefault("WANDB_MODE", "offline")

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from ness_sweep.benchmarks import stream_for  # noqa: E402
from ness_sweep.methods import make_trainer  # noqa: E402
from ness_sweep.metrics import seen_accuracy  # noqa: E402
from ness_sweep.results import Status, SweepFolder, read_table  # noqa: E402
from ness_sweep.sweep import dashboards, plan as planning, preflight, tuner  # noqa: E402
from ness_sweep.train import apply_threads  # noqa: E402


def timed_sweep(args, output_dir, name, out=lambda line: None):
    plan = planning.build_plan([*args, f"sweep.name={name}", f"output_dir={output_dir}"])
    outcome = tuner.run_sweep(plan, out=out)
    rows = outcome.table.to_pylist()
    compute = sum(r["seconds"] for r in rows)
    overhead = (outcome.seconds - compute / outcome.concurrency) / len(rows)
    return plan, rows, {"wall": outcome.seconds, "compute": compute, "concurrency": outcome.concurrency,
                        "overhead": overhead}


def time_wandb_callback():
    """Driver time spent in the W&B callback's hooks (Tune waits for them): per trial, and once per sweep."""
    spent = {"trials": collections.defaultdict(float), "once": 0.0}
    for hook in ("setup", "on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error",
                 "on_experiment_end"):
        def timed(self, *args, original=getattr(dashboards.WandbRuns, hook), **kwargs):
            started = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                seconds = time.perf_counter() - started
                if "trial" in kwargs:
                    spent["trials"][kwargs["trial"].trial_id] += seconds
                else:
                    spent["once"] += seconds
        setattr(dashboards.WandbRuns, hook, timed)
    return spent


def json_logger_cost(args, trials: int) -> None:
    """The same sweep (W&B disabled) with Tune's JSON logger (the sweep's default ``JsonLoggerCallback``, the
    other auto loggers off) and without it, side by side, and the driver time in its hooks."""
    from ray.tune.logger import JsonLoggerCallback

    spent = collections.defaultdict(float)
    for hook in ("log_trial_start", "log_trial_result", "log_trial_end"):
        def timed(self, iteration_or_trial, *rest, original=getattr(JsonLoggerCallback, hook), **kwargs):
            started = time.perf_counter()
            try:
                return original(self, iteration_or_trial, *rest, **kwargs)
            finally:
                spent["all"] += time.perf_counter() - started
        setattr(JsonLoggerCallback, hook, timed)
    plain_tuner = tuner._tuner

    def without_json_logger(plan, streams, num_tasks, parallel, callbacks, *rest):
        kept = [c for c in callbacks if not isinstance(c, JsonLoggerCallback)]
        return plain_tuner(plan, streams, num_tasks, parallel, kept, *rest)

    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for label, make in (("no per-trial logger", without_json_logger), ("JSON logger (default)", plain_tuner),
                            ("no per-trial logger, again", without_json_logger), ("JSON logger, again", plain_tuner)):
            tuner._tuner = make
            _, _, runs[label] = timed_sweep([*args, "wandb.mode=disabled"], scratch, f"run{len(runs)}")
            progress(f"{label}: {runs[label]}")
    tuner._tuner = plain_tuner
    print(f"{trials} trials, {runs['JSON logger (default)']['concurrency']} at a time, W&B disabled; "
          f"driver time in the JSON logger's hooks: {spent['all'] / (2 * trials):.4f} s a trial")
    print()
    print("| run | wall time (s) | wall per trial (s) | framework overhead per trial (s) |")
    print("|---|---:|---:|---:|")
    for label, run in runs.items():
        print(f"| {label} | {run['wall']:.1f} | {run['wall'] / trials:.3f} | {run['overhead']:.3f} |")


def live_progress_cost(args, trials: int) -> None:
    """The same sweep (W&B disabled) with live progress off (``sweep.progress_s=0``), at the default 30 s and at
    a 0.2 s interval (150 times the default's rate), alternated, twice each, side by side; and, exactly, what one
    epoch post costs a trial (``EpochPoster`` on a real board, every call posting)."""
    from ness_sweep.sweep.progress import EpochBoard, EpochPoster
    from ness_sweep.trainer import EpochProgress

    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for label, interval in (("progress off", 0), ("progress every 30 s (default)", 30),
                                ("progress every 0.2 s", 0.2), ("progress off, again", 0),
                                ("progress every 30 s (default), again", 30), ("progress every 0.2 s, again", 0.2)):
            _, _, runs[label] = timed_sweep([*args, "wandb.mode=disabled", f"sweep.progress_s={interval}"], scratch,
                                            f"run{len(runs)}")
            progress(f"{label}: {runs[label]}")
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    board = EpochBoard.remote()
    poster = EpochPoster(board, 0.0, "t", None)
    epoch, posts = EpochProgress(2, 5, 3, 10, 0.5, 0.6, 0.05, 1.0), 2000
    started = time.perf_counter()
    for _ in range(posts):
        poster(epoch)
    per_post = (time.perf_counter() - started) / posts
    ray.kill(board)
    ray.shutdown()
    def compute(kind: str) -> float:
        return sum(run["compute"] for label, run in runs.items() if kind in label)

    print(f"{trials} trials, {runs['progress off']['concurrency']} at a time, W&B disabled; one epoch post costs "
          f"the trial {per_post * 1e6:.0f} µs; Σ trial compute against progress off: "
          f"{compute('30 s') / compute('off') - 1:+.1%} at the default 30 s, "
          f"{compute('0.2 s') / compute('off') - 1:+.1%} at 0.2 s")
    print()
    print("| run | wall time (s) | Σ trial compute (s) | trial compute per trial (s) "
          "| framework overhead per trial (s) |")
    print("|---|---:|---:|---:|---:|")
    for label, run in runs.items():
        print(f"| {label} | {run['wall']:.1f} | {run['compute']:.1f} | {run['compute'] / trials:.3f} | "
              f"{run['overhead']:.3f} |")


SCALE_TRIALS = 300
SCALE_SETTINGS = ["train.epochs=1", "sweep.confirm_top=0"]  # trivial trials (~0.5-1 s here), the search alone
ENDS_WINDOW = 50  # ended trials at each end of the run whose throughput is compared
SAMPLE_S = 1.0  # how often the driver's CPU time and peak RSS are sampled
TUNE_STATE = ("experiment_state", "search_gen_state", "searcher-state", "tuner.pkl")  # Tune's files in the folder
Sample = collections.namedtuple("Sample", "at cpu rss_mb")  # unix time, CPU seconds, peak RSS so far (MB)


@contextlib.contextmanager
def driver_usage(every: float = SAMPLE_S):
    """This process's CPU time and peak RSS, sampled by a thread every ``every`` s while the block runs: the driver's
    own cost per trial end, which is what would grow with the trials it has seen, measured without a profiler."""
    samples = []
    stop = threading.Event()

    def sample():
        usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the driver; Ray's processes not
        samples.append(Sample(time.time(), usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024))

    def keep_sampling():
        while not stop.wait(every):
            sample()

    sample()
    thread = threading.Thread(target=keep_sampling, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        sample()


def sampled(samples, field: str, when: float) -> float:
    """A sampled running total (CPU seconds, peak RSS) at a moment between two samples, linearly interpolated."""
    return float(np.interp(when, [s.at for s in samples], [getattr(s, field) for s in samples]))


def cpu_share(samples, start: float, end: float) -> float:
    """The driver's CPU seconds per wall second between two moments: the share of one core it kept busy."""
    return (sampled(samples, "cpu", end) - sampled(samples, "cpu", start)) / (end - start)


def trial_times(rows):
    """The first ended trial's start and every ended trial's end, sorted, in unix seconds: the table's started_at
    and ended_at, the driver's clock."""
    ended = [row for row in rows if row["status"] in Status.ENDED]
    return min(row["started_at"] for row in ended).timestamp(), sorted(row["ended_at"].timestamp() for row in ended)


def per_minute(ends) -> float:
    """Trial ends per minute between a window's first and last end: the window's start-up is left out, so that the
    early window does not pay the trial workers' start that the late one does not."""
    return 60 * (len(ends) - 1) / (ends[-1] - ends[0])


def tenths(start: float, ends, samples):
    """One line per tenth of the run (the first trial's start to the last trial's end): trials that ended per
    minute and the driver's CPU share, so that a reader sees a trend, not only its two ends."""
    counts, edges = np.histogram(ends, bins=10, range=(start, ends[-1]))
    minutes = (edges[1] - edges[0]) / 60
    return [f"    {10 * i:3d}-{10 * i + 10}%: {count / minutes:6.1f} trials/min, driver CPU "
            f"{cpu_share(samples, edges[i], edges[i + 1]):4.0%}" for i, count in enumerate(counts)]


def tree_bytes(path: str) -> int:
    """Apparent size of a file, or of every file under a folder (links not followed)."""
    if not os.path.isdir(path) or os.path.islink(path):
        return os.lstat(path).st_size
    return sum(os.lstat(os.path.join(folder, name)).st_size for folder, _, names in os.walk(path) for name in names)


def folder_part(entry: os.DirEntry, trial_ids) -> str:
    """Which part of a sweep folder a top-level entry is: what grows per trial, told from what a sweep writes once.
    The table and the study count with whatever files beside them share their name's stem (row files, a journal's
    lock)."""
    stem = entry.name.partition(".")[0]
    if entry.name == SweepFolder.WANDB:
        return "wandb/"
    if entry.is_dir() and entry.name in trial_ids:
        return "trial folders"
    if stem == SweepFolder.TABLE.partition(".")[0]:
        return "results table"
    if stem == SweepFolder.OPTUNA.partition(".")[0]:
        return "Optuna study"
    if entry.name.startswith(TUNE_STATE):
        return "Tune's experiment state"
    return "the rest (plan, report page, plotly's library, ...)"


def folder_parts(sweep_dir: str, trial_ids) -> collections.Counter:
    """The sweep folder's bytes by part (``folder_part``)."""
    parts = collections.Counter()
    for entry in os.scandir(sweep_dir):
        parts[folder_part(entry, trial_ids)] += tree_bytes(entry.path)
    return parts


def command_seconds(*argv: str) -> float:
    """Wall time of ``python -m ARGV`` in a fresh process, its start and imports included (what a user waits); a
    command that fails stops this script with its error."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"python -m {' '.join(argv)} exited with {done.returncode}:\n{done.stderr}")
    return time.perf_counter() - started


def early_and_late(start: float, ends, samples):
    """The scale table's rows that compare the run's start with its end: throughput, driver CPU, peak RSS."""
    window = max(2, min(ENDS_WINDOW, len(ends) // 2))
    early, late = per_minute(ends[:window]), per_minute(ends[-window:])
    fifth = (ends[-1] - start) / 5
    cpu_early, cpu_late = cpu_share(samples, start, start + fifth), cpu_share(samples, ends[-1] - fifth, ends[-1])
    rss_early, rss_late = sampled(samples, "rss_mb", start + fifth), samples[-1].rss_mb
    return [f"| trials per minute, first / last {window} ended (between their first and last end) | {early:.1f} | "
            f"{late:.1f} | {late / early:.2f} | ≥ 0.90 |",
            f"| driver CPU, share of one core, first / last fifth of the run | {cpu_early:.0%} | {cpu_late:.0%} | "
            f"{cpu_late / cpu_early:.2f} | |",
            f"| driver peak RSS (MB), at the end of the first fifth / at the end | {rss_early:.0f} | "
            f"{rss_late:.0f} | {rss_late / rss_early:.2f} | |"]


def folder_lines(parts: collections.Counter, finished: int):
    """The folder table's rows: each part, largest first, and the whole against the target per finished trial."""
    total = sum(parts.values())
    return [*(f"| {part} | {size / 1024:.0f} | {size / 1024 / finished:.1f} | {size / total:.0%} | |"
              for part, size in parts.most_common()),
            f"| all | {total / 1024:.0f} | {total / 1024 / finished:.1f} | 100% | ≤ 100 KB per trial |"]


def scale(args, trials: int) -> None:
    """One sweep of many trivial trials, then the report and a resume with nothing left to run, in its folder."""
    with tempfile.TemporaryDirectory() as scratch:
        with driver_usage() as samples:
            plan, rows, run = timed_sweep(args, scratch, "scale", out=progress)
        progress(f"sweep: {run}")
        report_s = command_seconds("ness_sweep.report", plan.sweep_dir)
        progress(f"report: {report_s:.1f} s")
        parts = folder_parts(plan.sweep_dir, {row["trial_id"] for row in rows})
        resume_s = command_seconds("ness_sweep.run", *args, "sweep.name=scale", f"output_dir={scratch}", "resume=true")
        progress(f"resume: {resume_s:.1f} s")
        rows_after = read_table(plan.sweep_dir).num_rows
    start, ends = trial_times(rows)
    print(f"{trials} trials of {plan.space.source} ({plan.cfg.benchmark}, train.epochs={plan.cfg.train.epochs}, "
          f"FIFO, no confirmation), {run['concurrency']} at a time with trial.cpu={plan.cfg.trial.cpu}, on "
          f"{preflight.machine_cpus()} CPUs, W&B {plan.cfg.wandb.mode}, torch {torch.__version__}; sweep wall time "
          f"{run['wall']:.1f} s, mean trial compute {run['compute'] / len(rows):.2f} s; {len(ends)} of {len(rows)} "
          f"trials ended; the run is the first trial's start to the last trial's end ({ends[-1] - start:.1f} s)")
    print()
    print("| measure | early | late | late / early | target |")
    print("|---|---:|---:|---:|---|")
    print("\n".join(early_and_late(start, ends, samples)))
    print()
    print("| sweep folder (after the report), by part | KB | KB per finished trial | share | target |")
    print("|---|---:|---:|---:|---|")
    print("\n".join(folder_lines(parts, len(ends))))
    print()
    print("| command, a fresh process | wall time (s) |")
    print("|---|---:|")
    print(f"| `python -m ness_sweep.report SWEEP_DIR` | {report_s:.1f} |")
    print(f"| `python -m ness_sweep.run ... resume=true`, nothing left to run ({len(rows)} rows before, {rows_after} "
          f"after) | {resume_s:.1f} |")
    print()
    print("Per tenth of the run:")
    print("\n".join(tenths(start, ends, samples)))


def slot_idle(rows):
    """Where a trial slot waits, per run, from the table's started_at / ended_at (the driver's clock): inside the
    trial but outside its trainer (set-up, checkpoints, each report waiting for the driver: Tune's function
    trainables report synchronously), and from a slot's trial end to the next trial's start (the driver's callbacks,
    the next suggestion: each start against the latest end before it, the confirmation's first ones included, which
    wait out the stage change). Medians (s)."""
    timed = [row for row in rows if None not in (row["started_at"], row["ended_at"], row["seconds"])]
    inside = [(row["ended_at"] - row["started_at"]).total_seconds() - row["seconds"] for row in timed]
    ends = sorted(row["ended_at"].timestamp() for row in timed)
    starts = (row["started_at"].timestamp() for row in timed)
    turnaround = [start - ends[i - 1] for start in starts if (i := bisect.bisect_right(ends, start))]
    return statistics.median(inside), statistics.median(turnaround)


def seed_streams(settings, params_list):
    """Each seed's task stream, made from the first run on that seed, as a trial makes its own."""
    streams = {}
    for params in params_list:
        cfg = planning.trial_run_config(settings, params)
        if cfg.seed not in streams:
            streams[cfg.seed] = stream_for(cfg, cfg.seed)
    return streams


def loop(plan_args, params_list):
    """Train the runs one after another in this process, each on its own seed's stream and with the trials'
    thread count, as a trial would; returns (seconds, ACCs)."""
    plan = planning.build_plan(plan_args)
    started = time.perf_counter()
    settings = plan.run_settings()
    apply_threads(settings["threads"])
    streams, accs = seed_streams(settings, params_list), []
    for params in params_list:
        cfg = planning.trial_run_config(settings, params)
        try:
            accs.append(make_trainer(cfg, streams[cfg.seed], log=None).run().to_dict()["acc"])
        except FloatingPointError:  # diverged: the sweep's row ends so too, with no ACC
            accs.append(None)
    return time.perf_counter() - started, accs


def same_acc(loop_accs, row_acc) -> bool:
    """Whether the plain loop's runs of a row give the row's ACC (their mean), or diverged as it did (no ACC)."""
    if None in loop_accs or row_acc is None:
        return None in loop_accs and row_acc is None
    return abs(statistics.fmean(loop_accs) - row_acc) < 1e-9


def two_processes(plan_args, params_list, scratch: Path) -> float:
    """Half the runs in each of two fresh Python processes, one thread each, side by side."""
    halves = [params_list[0::2], params_list[1::2]]
    started = time.perf_counter()
    children = []
    for i, half in enumerate(halves):
        job = scratch / f"half{i}.json"
        job.write_text(json.dumps({"args": plan_args, "params": half}))
        children.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--loop", str(job)],
                                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=scratch))
    assert all(child.wait() == 0 for child in children)
    return time.perf_counter() - started


def bare_trial(config, settings, streams, runs):
    """A hand-written Tune trainable: one run, a report after each task, nothing else (no checkpoint, no search,
    no table, no W&B)."""
    cfg = planning.trial_run_config(settings, runs[config["run"]])
    torch.set_num_threads(cfg.threads)
    trainer = make_trainer(cfg, ray.get(streams[cfg.seed]), log=None)
    for task in range(trainer.num_tasks):
        try:
            trainer.run(until=task + 1)
        except FloatingPointError:
            return
        tune.report({"task": task + 1, "acc_seen": seen_accuracy(trainer.rows[task])})


def bare_tune(plan_args, params_list, parallel: int, scratch: Path) -> float:
    """The same runs in the Ray Tune script a user would write by hand: Ray started here, the runs as a grid of
    fixed configurations in one Tune run, as many at a time as the sweep, the sweep's Tune settings (no CSV or
    TensorBoard files, no status table), actors reused. What Ray Tune itself costs on this machine."""
    plan = planning.build_plan(plan_args)
    started = time.perf_counter()
    ray.init(address="local", num_cpus=preflight.machine_cpus(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    settings = plan.run_settings()
    streams = {seed: ray.put(stream) for seed, stream in seed_streams(settings, params_list).items()}
    trial = plan.cfg.trial
    with environment.scoped(environment.TUNE_SETTINGS):
        tune.Tuner(
            tune.with_resources(tune.with_parameters(bare_trial, settings=settings, streams=streams, runs=params_list),
                                {"cpu": trial.cpu, "gpu": trial.gpu}),
            param_space={"run": tune.grid_search(list(range(len(params_list))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=parallel, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(scratch / "bare_tune"), verbose=0)).fit()
    ray.shutdown()
    return time.perf_counter() - started


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv):
    if argv[:1] == ["--loop"]:
        job = json.loads(Path(argv[1]).read_text())
        loop(job["args"], job["params"])
        return
    options = dict(a.split("=", 1) for a in argv if a.startswith(("trials=", "space=")))
    extra = [a for a in argv if not a.startswith(("trials=", "space="))]
    trials = int(options.get("trials", SCALE_TRIALS if "scale" in argv else 32))
    args = [f"space={options.get('space', 'rank_threshold')}", f"sweep.num_samples={trials}", "sweep.scheduler=fifo",
            *extra]
    if "json_logger" in argv:
        json_logger_cost([a for a in args if a != "json_logger"], trials)
        return
    if "live_progress" in argv:
        live_progress_cost([a for a in args if a != "live_progress"], trials)
        return
    if "scale" in argv:
        scale([*SCALE_SETTINGS, *(a for a in args if a != "scale")], trials)
        return
    with tempfile.TemporaryDirectory() as scratch:
        in_wandb = time_wandb_callback()
        with driver_usage() as samples:
            plan, rows, offline = timed_sweep(args, scratch, "wandb_offline")
        driver_cpu = samples[-1].cpu - samples[0].cpu
        progress(f"sweep, W&B offline: {offline}")
        _, _, disabled = timed_sweep([*args, "wandb.mode=disabled"], scratch, "wandb_disabled")
        progress(f"sweep, W&B disabled: {disabled}")
        # every run the sweep made (the search's and the confirmation's), each with its seed
        params_list = [{**{key: row[key] for key in plan.space.search}, "seed": seed}
                       for row in rows for seed in row["seeds"]]
        plan_args = [*args, f"output_dir={scratch}"]
        loop_seconds, accs = loop(plan_args, params_list)
        progress(f"plain loop: {loop_seconds:.1f} s")
        pair_seconds = two_processes(plan_args, params_list, Path(scratch))
        progress(f"two plain processes: {pair_seconds:.1f} s")
        bare_seconds = bare_tune(plan_args, params_list, offline["concurrency"], Path(scratch))
        progress(f"hand-written Ray Tune script: {bare_seconds:.1f} s")
    run_accs = iter(accs)  # in the rows' order, each row's seeds in turn: a row's ACC is its seeds' mean
    same = sum(same_acc([next(run_accs) for _ in row["seeds"]], row["acc"]) for row in rows)
    print(f"{trials} trials of {plan.space.source} ({plan.cfg.benchmark}, train.epochs={plan.cfg.train.epochs}, FIFO), "
          f"{offline['concurrency']} at a time with trial.cpu={plan.cfg.trial.cpu}, "
          f"on {preflight.machine_cpus()} CPUs, "
          f"torch {torch.__version__}; mean trial compute {offline['compute'] / len(rows):.2f} s in the sweep; "
          f"{len(rows)} rows ({len(params_list)} runs, the confirmation's included), each also run by the plain loop "
          f"and the two plain processes; loop ACC equal to the sweep's for {same}/{len(rows)} rows (the loop uses "
          f"{torch.get_num_threads()} thread(s), as the trials)")
    print()
    print("| run | wall time (s) | speed-up vs loop | wall / two plain processes' | Σ trial compute (s) "
          "| framework overhead per trial (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, run in (("sweep, W&B offline (default)", offline), ("sweep, W&B disabled", disabled)):
        print(f"| {label} | {run['wall']:.1f} | {loop_seconds / run['wall']:.2f}× | {run['wall'] / pair_seconds:.2f}× "
              f"| {run['compute']:.1f} | {run['overhead']:.2f} |")
    print(f"| plain loop, one process | {loop_seconds:.1f} | 1.00× | {loop_seconds / pair_seconds:.2f}× | | |")
    print(f"| two plain processes, no Ray (this machine's ceiling) | {pair_seconds:.1f} | "
          f"{loop_seconds / pair_seconds:.2f}× | 1.00× | | |")
    print(f"| hand-written Ray Tune script, same runs, nothing else (Ray Tune's floor) | {bare_seconds:.1f} | "
          f"{loop_seconds / bare_seconds:.2f}× | {bare_seconds / pair_seconds:.2f}× | | |")
    print()
    inside, turnaround = slot_idle(rows)
    print(f"Where the default sweep's time goes besides its trials' compute: the driver process used "
          f"{driver_cpu:.1f} s of CPU ({driver_cpu / offline['wall']:.0%} of one core over the sweep, on the trials' "
          f"cores); a run spent a median {inside:.3f} s inside its trial but outside the trainer (set-up, checkpoints, "
          f"reports waiting for the driver), and a slot a median {turnaround:.3f} s from one trial's end to the next "
          f"trial's start")
    print()
    per_trial = sorted(in_wandb["trials"].values())
    print(f"W&B offline against disabled, same trials: {(offline['wall'] - disabled['wall']) / trials:+.2f} s of wall "
          f"time per trial, end to end, W&B's service sharing the CPUs with the trials (Σ trial compute "
          f"{offline['compute'] - disabled['compute']:+.1f} s). Driver time in the W&B callback: median "
          f"{statistics.median(per_trial):.3f} s a trial (at most {per_trial[-1]:.3f} s: the first run starts the "
          f"W&B service), and {in_wandb['once']:.2f} s once a sweep (setup, the sweep-level run)")


if __name__ == "__main__":
    main(sys.argv[1:])
