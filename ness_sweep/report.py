"""``python -m ness_sweep.report DIR [top=N | trial=ID]``: a sweep's leaderboard, rerun lines and best.yaml,
from its Parquet table alone.

DIR is OUTPUT_DIR/SWEEP_NAME (or the results.parquet file itself), a local path or a URI. Prints what
the sweep printed at its end: the best trials, or the Pareto front for several objectives, and the
``python -m ness_sweep.train ...`` line that reruns the best configuration. ``trial=ID`` prints the line
that reruns any one row instead. Works while a sweep runs too.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any, Dict, List, Optional

import pyarrow as pa
from omegaconf import OmegaConf

from .config import RunConfig, UserError, argument_value, flatten, unflatten
from .results import SweepFolder, best_rows, config_columns, filesystem_and_path, read_table, \
    sweep_metadata, write_atomically

USAGE = ("usage: python -m ness_sweep.report DIR [top=N | trial=ID]   (DIR: OUTPUT_DIR/SWEEP_NAME, local or a URI;"
         " trial=ID prints the command that reruns that row)")


def row_settings(row: Dict[str, Any], table: pa.Table) -> Dict[str, Any]:
    """The trial's run config as dotted key -> value, with its seed (or seeds)."""
    settings = {key: row[key] for key in config_columns(table)}
    seeds = row["seeds"] or []
    if len(seeds) == 1:
        settings["seed"] = seeds[0]
    elif seeds:
        settings["seeds"] = list(seeds)
    return settings


def train_command(row: Dict[str, Any], table: pa.Table) -> str:
    """``python -m ness_sweep.train ...`` rerunning the trial: the benchmark, the searched keys, every key that
    differs from the schema default, the seed(s), and always ``threads`` and ``device``: on the CPU float sums
    in another order would change the last digits, and training amplifies them."""
    defaults = flatten(OmegaConf.to_container(OmegaConf.structured(RunConfig)))
    meta = sweep_metadata(table)
    always = ("benchmark", "seed", "seeds", "threads", "device", *meta["searched"])
    parts = [f"{key}={argument_value(value)}" for key, value in row_settings(row, table).items()
             if key in always or defaults.get(key, object()) != value]
    return shlex.join(["python", "-m", "ness_sweep.train", *parts])


def best_config_yaml(row: Dict[str, Any], table: pa.Table) -> str:
    """The trial's full run config as YAML, usable as ``ness_sweep.train preset=best.yaml``."""
    return OmegaConf.to_yaml(OmegaConf.create(unflatten(row_settings(row, table))))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def leaderboard(table: pa.Table, top: int = 5) -> str:
    """The best trials (or the Pareto front) as a table, then the command rerunning each shown winner."""
    meta = sweep_metadata(table)
    rows = table.to_pylist()
    metrics, modes = meta["metrics"], meta["modes"]
    counts: Dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    status_text = ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items()))
    objectives = ", ".join(f"{m} ({mode})" for m, mode in zip(metrics, modes))
    best = best_rows(table)
    lines = [f"sweep {meta['sweep']}: {len(rows)} trials ({status_text})"]
    if not best:
        lines.append(f"no trial finished with {objectives}; nothing to rank")
        return "\n".join(lines)
    multi = len(metrics) > 1
    shown = best if multi else best[:top]
    lines.append(f"Pareto front over {objectives}: {len(best)} trials" if multi
                 else f"best {len(shown)} by {objectives}")
    metric_columns = [c for c in ("acc", "bwt", "forgetting") if c in metrics] + \
                     [c for c in ("acc", "bwt", "forgetting") if c not in metrics]
    columns = ["trial_id", *metric_columns, *meta["searched"], "seconds"]
    cells = [[str(i + 1)] + [_cell(r.get(c)) for c in columns] for i, r in enumerate(shown)]
    header = ["#", *columns]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    for row in [header, *cells]:
        lines.append("  " + "  ".join(v.rjust(w) for v, w in zip(row, widths)))
    reruns = shown if multi else shown[:1]
    lines.append("rerun the best configuration:" if not multi else "rerun a configuration of the front:")
    for row in reruns:
        scores = ", ".join(f"{m} {row[m]:.2f}" for m in metrics)
        lines.append(f"  # trial {row['trial_id']}: {scores}")
        lines.append(f"  {train_command(row, table)}")
    return "\n".join(lines)


def write_best_config(table: pa.Table, sweep_dir: str) -> Optional[str]:
    """``best.yaml`` beside the table: the best trial's run config (the first of a Pareto front)."""
    best = best_rows(table)
    if not best:
        return None
    fs, root = filesystem_and_path(sweep_dir)
    write_atomically(fs, f"{root}/{SweepFolder.BEST}", best_config_yaml(best[0], table).encode())
    return f"{sweep_dir.rstrip('/')}/{SweepFolder.BEST}"


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
