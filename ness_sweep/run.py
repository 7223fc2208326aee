"""The sweep command: ``python -m ness_sweep.run space=NAME [key=value ...]``.

Runs a Ray Tune sweep over a search space (``search_spaces/NAME.yaml`` or a path to your own file),
prints one line per finished trial, then the leaderboard with the ``python -m ness_sweep.train ...``
line that reruns the best configuration, and writes that configuration to ``best.yaml``. Bad input
exits with code 2 before anything is started or created.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import List, Optional

from .config import UserError, SweepConfig, help_text, parse_overrides

USAGE = """usage: python -m ness_sweep.run space=NAME [key=value ...]

Sweep NESS's hyperparameters with Ray Tune (Optuna search, ASHA early stopping, one W&B run per trial).
NAME is a shipped space ({spaces}) or a path to a space file.
Results: OUTPUT_DIR/SWEEP_NAME/results.parquet and best.yaml; `python -m ness_sweep.report DIR` reprints them.
Keys and their defaults (the space's fixed values and sweep defaults come between these and the command line):
"""


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        overrides = parse_overrides([a for a in argv if a not in ("-h", "--help", "help")])
        # Ray reads this when first imported. A local Ray binds to loopback only; joining a cluster keeps
        # the environment's setting (Ray's default on Linux: cluster networking on).
        if not (overrides.get("ray", {}).get("address") or os.environ.get("RAY_ADDRESS")):
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        from . import dashboards, sweep

        if any(a in ("-h", "--help", "help") for a in argv):
            print(USAGE.format(spaces=", ".join(sweep.known_spaces())) + help_text(SweepConfig))
            return 0
        plan = sweep.build_plan(argv)
        dashboards.check_login(plan.cfg)
        outcome = sweep.run_sweep(plan)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from .results import ENDED, leaderboard

    print(leaderboard(outcome.table))
    unfinished = sum(status not in ENDED for status in outcome.table.column("status").to_pylist())
    if unfinished:
        where = [f"output_dir={plan.cfg.output_dir}"] if plan.cfg.output_dir != SweepConfig.output_dir else []
        print(f"{unfinished} trials unfinished; continue with: "
              + shlex.join(["python", "-m", "ness_sweep.run", f"sweep.name={plan.name}", *where, "resume=true"]))
    best = sweep.write_best_config(outcome)
    if best:
        print(f"best configuration written to {best} (a preset: python -m ness_sweep.train preset={best})")
    sync = dashboards.sync_hint(plan.cfg, outcome.sweep_dir)
    if sync:
        print(sync)
    print(f"sweep took {outcome.seconds:.1f} s; python -m ness_sweep.report {outcome.sweep_dir} prints this again")
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
