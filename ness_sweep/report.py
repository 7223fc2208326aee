"""``python -m ness_sweep.report DIR [DIR ...] [top=N | trial=ID]``: a sweep's leaderboard, rerun lines, best.yaml
and report.html, from its Parquet table alone: the command, and the files it writes (which the sweep's end
writes too). The text itself is ``leaderboard``'s.

DIR is OUTPUT_DIR/SWEEP_NAME (or the results.parquet file in it), a local path or a URI; a folder given twice,
in any spelling, counts once, and a damaged or foreign table is one line (``report_input``). Prints what
the sweep printed at its end: the best search trials by the objective (validation numbers unless the sweep
selected on test), or the Pareto front for several objectives; then the confirmation (each confirmed
configuration's search and confirmed numbers, the per-method table of a sweep over methods, the winner's
headline) and the ``python -m ness_sweep.train ...`` line that reruns the winner on its confirmation seeds (without
a confirmation: the best configuration); then writes ``DIR/report.html`` (``report_page``).
Several DIRs are ranked together in one table with a ``sweep`` column (they must share their objectives; sweeps
of different benchmarks or methods get a column for it and a warning line; comparing writes no page).
``trial=ID`` (or a start of the ID that only one trial has) prints the line that reruns any one row instead,
looked up in every DIR given; for a trial that did not finish, a comment line above it says how the full run
differs from the row. Works while a sweep runs too. Paths are printed absolute (a URI as given).
"""

from __future__ import annotations

import sys
from typing import Callable, Dict, List, Optional

import pyarrow as pa

from .config import UserError, first_line
from .leaderboard import best_config_yaml, chosen, compare, rerun_caveat, train_command
from .report_input import USAGE, find_trial, parse_arguments, read_sweep
from .results import SweepFolder, filesystem_and_path, sweep_metadata, write_atomically


def shown_file(sweep_dir: str, name: str) -> str:
    """Where a file of the sweep folder is, as printed: the absolute path of a local folder, a URI as given; so
    every path the sweep and the report print reads the same way and opens from any working directory."""
    if "://" in sweep_dir:
        return f"{sweep_dir.rstrip('/')}/{name}"
    return f"{filesystem_and_path(sweep_dir)[1].rstrip('/')}/{name}"


def write_best_config(table: pa.Table, sweep_dir: str) -> Optional[str]:
    """``best.yaml`` beside the table: the chosen trial's run config (``chosen``)."""
    row, confirmed = chosen(table)
    if row is None:
        return None
    fs, root = filesystem_and_path(sweep_dir)
    write_atomically(fs, f"{root.rstrip('/')}/{SweepFolder.BEST}", best_config_yaml(row, table, confirmed).encode())
    return shown_file(sweep_dir, SweepFolder.BEST)


def write_report_page(sweep_dir: str, warn: Callable[[str], None]) -> Optional[str]:
    """``DIR/report.html`` (``report_page.write_html``) and where it went, or None after one ``warn`` line: the
    page is a view of the table, so failing to write it (a read-only folder, a plot that breaks) must cost
    neither the leaderboard nor the sweep."""
    try:
        from .report_page import write_html  # plotly loads only when a page is written

        return write_html(sweep_dir)
    except Exception as error:  # whatever breaks the page is reported in one line, never raised
        warn(f"warning: {shown_file(sweep_dir, SweepFolder.REPORT)} not written: {first_line(error)}")
        return None


def rerun_text(tables: Dict[str, pa.Table], trial_id: str) -> str:
    """The ``python -m ness_sweep.train ...`` line of one row (``report_input.find_trial``), under a comment line
    saying how its run differs from the row when the trial did not finish."""
    _, row, table = find_trial(tables, trial_id)
    caveat = rerun_caveat(row, table)
    return "\n".join([*([caveat] if caveat else []), train_command(row, table)])


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        dirs, top, trial_id = parse_arguments(argv)
        tables = {location: read_sweep(location) for location in dirs}
        if trial_id is not None:
            print(rerun_text(tables, trial_id))
            return 0
        names = [sweep_metadata(table)["sweep"] for table in tables.values()]
        print(compare(list(tables.values()), top, names if len(set(names)) == len(names) else dirs))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(dirs) == 1:
        page = write_report_page(dirs[0], lambda line: print(line, file=sys.stderr))
        if page:
            print(f"report written to {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
