"""``python -m ness_sweep.report DIR [top=N | trial=ID]``: a sweep's leaderboard from its Parquet table alone.

DIR is OUTPUT_DIR/SWEEP_NAME (or the results.parquet file itself), a local path or a URI. Prints what
the sweep printed at its end: the best trials, or the Pareto front for several objectives, and the
``python -m ness_sweep.train ...`` line that reruns the best configuration. ``trial=ID`` prints the line
that reruns any one row instead. Works while a sweep runs too.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import pyarrow as pa

from .config import UserError
from .results import leaderboard, read_table, train_command

USAGE = ("usage: python -m ness_sweep.report DIR [top=N | trial=ID]   (DIR: OUTPUT_DIR/SWEEP_NAME, local or a URI;"
         " trial=ID prints the command that reruns that row)")


def parse_top(arg: str) -> int:
    """``top=N``: how many trials to list, a whole number >= 1."""
    value = arg[len("top="):]
    if not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise UserError(f"{arg}: top must be a whole number >= 1 (how many trials to list)")
    return int(value)


def rerun_line(table: pa.Table, trial_id: str) -> str:
    """The ``python -m ness_sweep.train ...`` line of one row: its settings, seeds, threads and device."""
    rows = [row for row in table.to_pylist() if row["trial_id"] == trial_id]
    if not rows:
        raise UserError(f"trial={trial_id}: no such trial in the table; its trial_id column lists them")
    return train_command(rows[0], table)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        if len(argv) not in (1, 2) or (len(argv) == 2 and not argv[1].startswith(("top=", "trial="))):
            raise UserError(USAGE)
        if len(argv) == 2 and argv[1].startswith("trial="):
            print(rerun_line(read_table(argv[0]), argv[1][len("trial="):]))
            return 0
        top = parse_top(argv[1]) if len(argv) == 2 else 5
        print(leaderboard(read_table(argv[0]), top))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (pa.ArrowException, OSError) as error:
        print(f"error: {argv[0]}: cannot read the results table: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
