"""What ``python -m ness_sweep.report`` is given: its arguments, the sweep folders they name, and their tables,
checked so that a damaged or foreign table is one line naming it (exit code 2), never a traceback later.

A folder may be given as ``DIR``, ``DIR/`` or ``DIR/results.parquet``: all three name one sweep, counted once.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa

from .config import UserError, first_line
from .results import ID_COLUMNS, METRIC_COLUMNS, SweepFolder, read_table, sweep_metadata

USAGE = ("usage: python -m ness_sweep.report DIR [DIR ...] [top=N | trial=ID]   (DIR: OUTPUT_DIR/SWEEP_NAME, local "
         "or a URI; several DIRs are compared in one table; trial=ID, or a unique start of it, prints the command "
         "that reruns that row)")
# The metadata every table written by ness_sweep.run carries, and its type; then what newer sweeps add.
REQUIRED_METADATA = {"sweep": str, "metrics": list, "modes": list, "searched": list, "config_columns": list}
OPTIONAL_METADATA = {"method_groups": dict, "by_method": bool, "selected_on": str, "confirm_seeds": list}
MODES = ("max", "min")


def sweep_folder(location: str) -> str:
    """The sweep folder a location names, as given: ``DIR``, ``DIR/`` and ``DIR/results.parquet`` all give ``DIR``."""
    trimmed = location.rstrip("/") or location
    if trimmed == SweepFolder.TABLE or trimmed.endswith("/" + SweepFolder.TABLE):
        head = trimmed[:-len(SweepFolder.TABLE)]
        return "." if not head else (head.rstrip("/") or "/")
    return trimmed


def folder_identity(folder: str) -> str:
    """One string per sweep folder however it was written: the real absolute path of a local one, a URI as given."""
    if "://" in folder:
        return folder
    return os.path.realpath(os.path.expanduser(folder))


def parse_top(arg: str) -> int:
    """``top=N``: how many trials to list, a whole number >= 1."""
    value = arg[len("top="):]
    if not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise UserError(f"{arg}: top must be a whole number >= 1 (how many trials to list)")
    return int(value)


def parse_arguments(argv: Sequence[str]) -> Tuple[List[str], int, Optional[str]]:
    """(sweep folders, top, trial ID). ``key=value`` with a plain key is an option, anything else a folder (so
    ``s3://bucket/date=1`` stays one; a local folder named like an option is written ``./top=3``). A folder
    given twice, in any of its spellings, is counted once."""
    folders: Dict[str, str] = {}  # identity -> the folder as first given
    options: Dict[str, str] = {}
    for arg in argv:
        key, equals, value = arg.partition("=")
        if arg.startswith("-") or (equals and re.fullmatch(r"[A-Za-z_][\w.]*", key)):
            if key not in ("top", "trial"):
                raise UserError(f"argument {arg}: unknown; give sweep folders and top=N or trial=ID "
                                f"(a folder named so: ./{arg})")
            if key in options:
                raise UserError(f"{key}=: given twice")
            options[key] = arg
        else:
            folder = sweep_folder(arg)
            folders.setdefault(folder_identity(folder), folder)
    if not folders:
        raise UserError(USAGE)
    if len(options) == 2:
        raise UserError("trial=ID prints one rerun line; top=N does not go with it")
    trial_id = options["trial"][len("trial="):] if "trial" in options else None
    if trial_id == "":
        raise UserError("trial=: give a trial ID, or the start of one (the trial_id column lists them)")
    top = parse_top(options["top"]) if "top" in options else 5
    return list(folders.values()), top, trial_id


def _metadata(location: str, table: pa.Table) -> Dict[str, Any]:
    """The table's ``ness_sweep`` metadata, each key of the type the report reads it as."""
    damaged = f"{location}: the results table's ness_sweep metadata"
    try:
        meta = sweep_metadata(table)
    except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{damaged} is not JSON ({first_line(error)}): not a table ness_sweep.run wrote, or a "
                        "damaged one") from None
    if not isinstance(meta, dict):
        raise UserError(f"{damaged} is a {type(meta).__name__}; ness_sweep.run writes an object")
    for key, kind in REQUIRED_METADATA.items():
        if not isinstance(meta.get(key), kind):
            raise UserError(f"{damaged} has {'no ' + key if key not in meta else key + ' ' + repr(meta[key])}; "
                            f"ness_sweep.run writes a {kind.__name__} there")
    for key, kind in OPTIONAL_METADATA.items():
        if key in meta and not isinstance(meta[key], kind):
            raise UserError(f"{damaged} has {key} {meta[key]!r}; ness_sweep.run writes a {kind.__name__} there")
    for key in ("metrics", "modes", "searched", "config_columns"):
        if not all(isinstance(item, str) for item in meta[key]):
            raise UserError(f"{damaged} has {key} {meta[key]!r}; ness_sweep.run writes a list of names there")
    metrics, modes = meta["metrics"], meta["modes"]
    if not metrics or len(modes) != len(metrics) or any(mode not in MODES for mode in modes):
        raise UserError(f"{damaged} has metrics {metrics} with modes {modes}; ness_sweep.run writes one mode "
                        f"({' or '.join(MODES)}) per metric")
    return meta


def check_table(location: str, table: pa.Table) -> None:
    """A table the report can read: its metadata whole, the columns it reads there, each of ness_sweep's type."""
    meta = _metadata(location, table)
    for column in ("trial_id", "status", *meta["config_columns"], *meta["searched"]):
        if column not in table.column_names:
            raise UserError(f"{location}: the results table has no {column} column; ness_sweep.run writes one")
    expected = dict([*ID_COLUMNS, *METRIC_COLUMNS])
    for field in table.schema:
        kind = expected.get(field.name)
        if kind is not None and field.type != kind and not pa.types.is_null(field.type):
            raise UserError(f"{location}: the results table's {field.name} column holds {field.type}; "
                            f"ness_sweep.run writes {kind} there")


def read_sweep(location: str) -> pa.Table:
    """The results table of a sweep folder, checked; every failure to read it a UserError naming it."""
    try:
        table = read_table(location)
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"{location}: cannot read the results table: {first_line(error)}") from None
    check_table(location, table)
    return table


def find_trial(tables: Dict[str, pa.Table], trial_id: str) -> Tuple[str, Dict[str, Any], pa.Table]:
    """(folder, row, table) of the trial with this ID, or else the one whose ID starts with it, in whichever
    sweep holds it; an ID in several sweeps, or a start shared by several trials, is refused naming them."""
    rows = [(location, row, table) for location, table in tables.items() for row in table.to_pylist()]
    found = [entry for entry in rows if entry[1]["trial_id"] == trial_id]
    if len(found) > 1:
        raise UserError(f"trial={trial_id}: in {', '.join(location for location, _, _ in found)}; give the one DIR")
    found = found or [entry for entry in rows if str(entry[1]["trial_id"]).startswith(trial_id)]
    if not found:
        raise UserError(f"trial={trial_id}: no such trial in {', '.join(tables)}; the trial_id column lists them")
    if len(found) > 1:
        several = len(tables) > 1
        matches = ", ".join(row["trial_id"] + (f" ({location})" if several else "") for location, row, _ in found)
        raise UserError(f"trial={trial_id}: the start of {len(found)} trials' IDs ({matches}); give more of it")
    return found[0]

