"""Does ASHA stop the trials a full run would choose? Same trials, with and without early stopping.

    python perf/asha.py [seeds=0,1,2] [graces=2,3,4] [space=mnist1d] [key=value ...]

For each sweep seed, one fifo sweep of the space runs every trial to the end (no confirmation, W&B off). Its
trials are then replayed through Ray Tune's own ASHAScheduler, as the sweep would run them (two at a time, each
task taking the time it took), once per grace period: which trials ASHA would have stopped, how many of fifo's
top 3 by the selection metric (valid_acc) among them, and the share of task-trainings it would have saved.
Replaying the same trials removes the other source of difference between two real sweeps: a stopped trial
changes what TPE proposes next. Prints one table; docs/concepts/selection.md cites it.
"""

from __future__ import annotations

import heapq
import sys
import time
from types import SimpleNamespace
from typing import Dict, List, Sequence

import ness_sweep
from ness_sweep.config import UserError
from ness_sweep.sweep.tuner import asha_scheduler

TOP = 3
CONCURRENCY = 2


def asha_stops(rows: Sequence[Dict], grace: int, signal: str) -> Dict[str, int]:
    """Trial id -> the task after which ASHA (the sweep's own scheduler, with this grace period) stops it, for the
    trials it stops. Trials start in the sweep's order on ``CONCURRENCY`` slots; task k of a trial ends at its
    start plus k times its measured seconds per task, and results are fed in the order they would arrive."""
    num_tasks = len(rows[0][f"{signal}_per_task"])
    scheduler = asha_scheduler(signal, num_tasks, grace)
    stopped: Dict[str, int] = {}
    slots = [0.0] * CONCURRENCY
    events: List = []
    for row in rows:
        start = heapq.heappop(slots)  # the first free of CONCURRENCY slots
        per_task = row["seconds"] / num_tasks
        trial = SimpleNamespace(trial_id=row["trial_id"])
        scheduler.on_trial_add(None, trial)
        for k, value in enumerate(row[f"{signal}_per_task"], start=1):
            heapq.heappush(events, (start + k * per_task, row["trial_id"], k, value, trial))
        heapq.heappush(slots, start + num_tasks * per_task)
    while events:
        _, trial_id, k, value, trial = heapq.heappop(events)
        if trial_id in stopped:
            continue
        action = scheduler.on_trial_result(None, trial, {"task": k, signal: value})
        if action == "STOP" and k < num_tasks:
            stopped[trial_id] = k
    return stopped


def main(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    options = dict(a.split("=", 1) for a in argv if a.startswith(("seeds=", "graces=", "space=")))
    extra = [a for a in argv if not a.startswith(("seeds=", "graces=", "space="))]
    try:
        seeds = [int(s) for s in options.get("seeds", "0,1,2").split(",")]
        graces = [int(g) for g in options.get("graces", "2,3,4").split(",")]
    except ValueError:
        print("error: seeds= and graces= take comma-separated whole numbers (seeds=0,1,2 graces=2,3,4)",
              file=sys.stderr)
        return 2
    space = options.get("space", "mnist1d")
    print(f"ASHA replayed on fifo sweeps of space={space}; seeds {seeds}; grace periods {graces}; "
          f"top {TOP} by the selection metric; {CONCURRENCY} trials at a time")
    header = f"{'sweep.seed':>10}  {'grace':>5}  {'stopped':>7}  {'fifo top-3 stopped':>18}  {'tasks saved':>11}"
    lines = [header]
    for seed in seeds:
        started = time.perf_counter()
        args = [f"space={space}", "sweep.scheduler=fifo", f"sweep.seed={seed}", "sweep.confirm_top=0",
                "sweep.progress_s=0", *extra]
        try:
            found = ness_sweep.sweep(*args, wandb={"mode": "disabled"},
                                     out=lambda line: None)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        rows = [r for r in found.table.to_pylist() if r["status"] == "TERMINATED"]
        metric = "valid_acc"
        top = {r["trial_id"] for r in sorted(rows, key=lambda r: -r[metric])[:TOP]}
        signal = "valid_acc_seen"
        print(f"sweep.seed={seed}: {len(rows)} trials ran to the end in {time.perf_counter() - started:.0f} s; "
              f"top {TOP} by {metric}: " + ", ".join(f"{r['trial_id']} {r[metric]:.2f}"
                                                       for r in sorted(rows, key=lambda r: -r[metric])[:TOP]))
        num_tasks = len(rows[0][f"{signal}_per_task"])
        for grace in graces:
            stopped = asha_stops(rows, grace, signal)
            saved = sum(num_tasks - k for k in stopped.values()) / (num_tasks * len(rows))
            lines.append(f"{seed:>10}  {grace:>5}  {len(stopped):>3}/{len(rows):<3}  "
                         f"{len(top & set(stopped)):>16}/{TOP}  {100 * saved:>10.0f}%")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
