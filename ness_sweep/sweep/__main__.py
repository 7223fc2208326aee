"""The sweep command: ``python -m ness_sweep.run space=NAME [key=value ...]`` (or ``python -m ness_sweep.sweep``).

Runs a Ray Tune sweep over a search space (``search_spaces/NAME.yaml`` or a path to your own file), chosen on
validation data, then reruns its best configurations on fresh seeds (the confirmation); prints one line per
finished trial, then the leaderboard, the confirmed winner's headline and the ``python -m ness_sweep.train ...``
line that reruns it, writes that configuration to ``best.yaml`` and the plots to ``report.html``. ``dry_run=true``
prints the resolved plan instead, starting and creating nothing. Bad input exits with code 2 before anything is
started or created.

Exit codes: 0 the sweep ran; 1 trials are left unfinished (the line that continues them is printed), or every
trial failed (one line says so); 2 bad input, a sweep folder another driver is running (named by host and
PID), or a file of the sweep folder that cannot be written (the sweep stops, resumable, naming the file).
"""

from __future__ import annotations

import shlex
import sys
from typing import List, Optional

from .. import environment
from ..config import SweepConfig, UserError, help_text
from ..results import error_line
from .driver import resume_command, sweep
from .space import known_spaces

USAGE = """usage: python -m ness_sweep.run space=NAME [key=value ...]

Sweep NESS's hyperparameters with Ray Tune (Optuna search and ASHA early stopping on validation numbers, the best
configurations confirmed on fresh seeds, one W&B run per trial).
NAME is a shipped space ({spaces}) or a path to a space file.
Results: OUTPUT_DIR/SWEEP_NAME/results.parquet, best.yaml and report.html; `python -m ness_sweep.report DIR`
reprints them (several DIRs: one table comparing the sweeps).
dry_run=true prints the resolved plan (settings, searched keys, resources, concurrency, folder) and exits.
resume=true sweep.name=NAME continues an interrupted sweep with its stored plan.
Keys, their defaults and what they mean (a space's fixed values and sweep defaults come between these and the
command line):
"""


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    address = next((a.partition("=")[2] for a in argv if a.startswith("ray.address=")), None)
    environment.bind_ray_to_loopback(address)  # first: whatever imports Ray later must find it set
    if any(a in ("-h", "--help", "help") for a in argv):
        from ..methods import groups_help, registered_names  # torch: only when help is asked for

        print(USAGE.format(spaces=", ".join(known_spaces())) + help_text(SweepConfig) + "\n" + groups_help() + "\n"
              + registered_names())
        return 0
    try:
        result = sweep(*argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result is None:  # dry_run=true: the plan is printed, nothing started
        return 0
    from ..leaderboard import leaderboard

    print(leaderboard(result.table))
    if result.report_html:
        print(f"report written to {result.report_html}")
    if result.unfinished:
        print(f"{result.unfinished} trials unfinished; continue with: {shlex.join(resume_command(result.folder))}")
    if result.best_yaml:
        print(f"best configuration written to {result.best_yaml} "
              f"(a preset: python -m ness_sweep.train preset={result.best_yaml})")
    if result.upload_hint:
        print(result.upload_hint)
    print(f"sweep took {result.seconds:.1f} s; python -m ness_sweep.report {result.folder.location} prints this again")
    if result.all_failed:
        first = result.table.column("error")[0].as_py()
        print(f"error: every trial failed ({result.table.num_rows} of {result.table.num_rows} ended ERROR; the first: "
              f"{error_line(first)}); each row's error column holds the whole error", file=sys.stderr)
    return 1 if result.unfinished or result.all_failed else 0


if __name__ == "__main__":
    sys.exit(main())
