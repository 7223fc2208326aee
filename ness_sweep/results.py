"""A sweep's folder and its results table: one Parquet row per trial, its schema and trial statuses, written a
row file per ended trial and folded into the table (``read_table`` merges both). Ranking rows is ``selection``'s.

The table is the record of a sweep: ``ness_sweep.report`` rebuilds the leaderboard, the Pareto front and
the command that reruns any trial from it alone. Its schema is explicit: fixed columns below, one column
per run setting (``train.lr``, ``ness.rank``, ...) typed by the sweep, and JSON metadata under
``ness_sweep`` naming the sweep, its metrics and modes, and the searched keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import UserError, first_line
from .metrics import FINAL, TEST, VALID, on_split

METADATA_KEY = b"ness_sweep"


class Status:
    """A trial's status as the table records it: Ray Tune's trial states, with the sweep's own endings.

    PENDING → RUNNING (⇄ PAUSED, when ASHA pauses it at a rung) → one ending:
    TERMINATED (it finished every task), STOPPED (ASHA stopped it early), DIVERGED (its loss became NaN/inf:
    a result of the search, not retried), ERROR (it raised, ``trial.max_failures`` + 1 times).
    A sweep interrupted while a trial had not ended records UNFINISHED; ``resume=true`` continues it.
    """

    PENDING, RUNNING, PAUSED, UNFINISHED = "PENDING", "RUNNING", "PAUSED", "UNFINISHED"
    TERMINATED, STOPPED, DIVERGED, ERROR = "TERMINATED", "STOPPED", "DIVERGED", "ERROR"
    ENDED = (TERMINATED, STOPPED, DIVERGED, ERROR)


class WriteFailed(UserError):
    """A file of the sweep folder could not be written (disk full, no permission, a folder in its place): the
    driver's failure, never a trial's. One line naming the file and the cause, exit code 2."""


class Stage:
    """Which part of a sweep a row comes from: the search (Optuna's proposals, ASHA's stops) or the confirmation
    (a search row's configuration rerun on fresh seeds when the search has ended)."""

    SEARCH, CONFIRM = "search", "confirm"


@dataclass(frozen=True)
class SweepFolder:
    """``OUTPUT_DIR/NAME``, local or a URI: every file a sweep keeps, named in one place."""

    output_dir: str
    name: str

    TABLE = "results.parquet"
    ROWS = "results.rows"  # rows written since the table was last rewritten, a small file each: part of the table
    PLAN = "plan.yaml"
    BEST = "best.yaml"
    REPORT = "report.html"
    OPTUNA = "optuna.journal"  # the Optuna study, a journal file (sweep/study.py)
    WANDB = "wandb"
    LOCK = "driver.lock"  # locked by the driver running the sweep, naming its host and PID (sweep/lock.py)

    @property
    def location(self) -> str:
        """As the user would type it (the output_dir as given)."""
        return f"{self.output_dir.rstrip('/')}/{self.name}"

    @property
    def filesystem(self) -> pafs.FileSystem:
        return filesystem_and_path(self.output_dir)[0]

    def path(self, *parts: str) -> str:
        """A path inside the folder on its file system (``path()`` is the folder itself)."""
        root = filesystem_and_path(self.output_dir)[1]
        return "/".join([root, self.name, *parts])

    def shown(self, *parts: str) -> str:
        """A path inside the folder as the user would type it."""
        return "/".join([self.location, *parts])

    def exists(self, *parts: str) -> bool:
        return exists(self.filesystem, self.path(*parts))

    @contextlib.contextmanager
    def staged_locally(self, entry: str, fetch: bool) -> Iterator[str]:
        """A local path for ``entry`` while a block runs, for writers of local files only (SQLite, W&B): the
        folder's own for a local output_dir; for a URI one in a temporary folder, fetched from the sweep folder
        first when ``fetch`` and it exists there, and copied back at the end (a driver killed meanwhile leaves
        the folder's copy as the last run ended)."""
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            yield self.path(entry)
            return
        local_fs = pafs.LocalFileSystem()
        with tempfile.TemporaryDirectory(prefix="ness_sweep_staging_") as staging:
            local = os.path.join(staging, entry)
            if fetch and self.exists(entry):
                pafs.copy_files(self.path(entry), local, source_filesystem=self.filesystem,
                                destination_filesystem=local_fs)
            try:
                yield local
            finally:
                if os.path.exists(local):
                    pafs.copy_files(local, self.path(entry), source_filesystem=local_fs,
                                    destination_filesystem=self.filesystem)


def error_line(text: Optional[str]) -> str:
    """A trial's error (the ``error`` column) in one line for the sweep's output: its last non-empty line, the
    exception itself."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "the trial failed without a message"


# Columns before the config columns: who the trial is and where it ran.
ID_COLUMNS = [
    ("trial_id", pa.string()),
    ("status", pa.string()),  # a Status
    ("node_ip", pa.string()),
    ("node_id", pa.string()),
]
# Columns after the config columns: what the trial measured (means over its seeds; *_std when several), on each
# task's test split and, ``valid_*``, on its validation split (what the sweep selects on).
METRIC_COLUMNS = [
    ("stage", pa.string()),  # a Stage: found by the search, or rerun on fresh seeds to confirm a search row
    ("confirms", pa.string()),  # a confirmation row: the trial_id of the search row it reruns
    ("seeds", pa.list_(pa.int64())),
    ("task", pa.int64()),  # tasks finished
    ("acc_seen", pa.float64()),
    ("acc_seen_per_task", pa.list_(pa.float64())),  # acc_seen after each finished task
    ("valid_acc_seen", pa.float64()),
    ("valid_acc_seen_per_task", pa.list_(pa.float64())),  # what ASHA decides on: where it stopped a trial
    *[(on_split(metric, split) + std, pa.float64())
      for split in (TEST, VALID) for metric in FINAL for std in ("", "_std")],
    ("acc_matrix", pa.list_(pa.list_(pa.float64()))),  # R[i][j], null above the diagonal
    ("valid_acc_matrix", pa.list_(pa.list_(pa.float64()))),
    ("diagnostics", pa.list_(pa.map_(pa.string(), pa.float64()))),  # per task, the method's numbers (first seed's)
    ("trainable_params", pa.list_(pa.int64())),  # per task (the first seed's)
    ("seconds", pa.float64()),  # training time, summed over seeds
    ("error", pa.string()),
    ("started_at_task", pa.int64()),  # where the trial's last attempt began: > 0 after a restart or resume
    ("started_at", pa.timestamp("us", tz="UTC")),  # when the trial first started (the driver's clock)
    ("ended_at", pa.timestamp("us", tz="UTC")),  # when it ended: throughput over a sweep, read from the table
    ("recovery", pa.string()),  # set when an unreadable checkpoint was passed over: what the trial continued from
]


def make_schema(config_columns: Sequence[Tuple[str, pa.DataType]], metadata: Dict[str, Any]) -> pa.Schema:
    """The table's schema: id columns, config columns, metric columns, and the sweep's metadata."""
    fields = [pa.field(name, kind) for name, kind in [*ID_COLUMNS, *config_columns, *METRIC_COLUMNS]]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(metadata).encode()})


def sweep_metadata(table: pa.Table) -> Dict[str, Any]:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise UserError("results table has no ness_sweep metadata: not written by ness_sweep.run")
    return json.loads(raw)


def config_columns(table: pa.Table) -> List[str]:
    return sweep_metadata(table)["config_columns"]


def filesystem_and_path(location: str) -> Tuple[pafs.FileSystem, str]:
    """A local path or any URI pyarrow understands (``s3://bucket/x``, ``gs://...``, ``file:///...``)."""
    if "://" in location:
        try:
            return pafs.FileSystem.from_uri(location)
        except Exception as error:  # pyarrow raises several types for bad or unreachable URIs
            raise UserError(f"{location}: not a usable location: {first_line(error)}") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_atomically(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write to a temporary name, then rename: readers never see a half-written file. A write that fails (disk
    full, a folder in the way) leaves the file as it was and no temporary behind, and raises ``WriteFailed``."""
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(temporary) as stream:
            stream.write(data)
        fs.move(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            fs.delete_file(temporary)
        raise write_failed(fs, path, error) from None


def write_failed(fs: pafs.FileSystem, path: str, error: OSError, doing: str = "write") -> WriteFailed:
    """``cannot write PATH (No space left on device)``: the file and the cause, in one line."""
    cause = os.strerror(error.errno) if error.errno else first_line(error)
    shown = path if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{path}"
    return WriteFailed(f"cannot {doing} {shown} ({cause})")


def _parquet_bytes(rows: List[Dict[str, Any]], schema: pa.Schema) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    return sink.getvalue().to_pybytes()


def write_table(rows: List[Dict[str, Any]], schema: pa.Schema, fs: pafs.FileSystem, path: str,
                replaces: Sequence[str] = ()) -> None:
    """Rewrite the table at ``path`` with every row, then delete the row files (``write_row``) it now holds."""
    write_atomically(fs, path, _parquet_bytes(rows, schema))
    for row_file in replaces:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(row_file)


def write_row(row: Dict[str, Any], schema: pa.Schema, fs: pafs.FileSystem, path: str) -> str:
    """Add one row to the table at ``path`` without rewriting it: a small file in ``results.rows/`` beside it,
    named in the order written, which ``read_table`` reads with the table (a trial's newest row wins). Returns its
    path."""
    directory = _rows_dir(path)
    try:
        fs.create_dir(directory, recursive=True)
    except OSError as error:
        raise write_failed(fs, directory, error) from None
    row_file = f"{directory}/{time.time_ns():020d}-{row['trial_id']}.parquet"
    write_atomically(fs, row_file, _parquet_bytes([row], schema))
    return row_file


def row_files(fs: pafs.FileSystem, path: str) -> List[str]:
    """The row files of the table at ``path``, oldest first (a write a kill cut short left no file of this name)."""
    entries = fs.get_file_info(pafs.FileSelector(_rows_dir(path), allow_not_found=True))
    return sorted(e.path for e in entries if e.type == pafs.FileType.File and e.base_name.endswith(".parquet"))


def _rows_dir(path: str) -> str:
    return f"{path.rpartition('/')[0]}/{SweepFolder.ROWS}"


def read_table(location: str) -> pa.Table:
    """The table of a sweep directory (or of the Parquet file itself), local or URI, with the rows written since it
    was last rewritten (``write_row``): every row a driver wrote, also after a kill."""
    fs, path = filesystem_and_path(location)
    if not path.endswith(".parquet"):
        path = f"{path.rstrip('/')}/{SweepFolder.TABLE}"
    if not exists(fs, path):
        raise UserError(f"{location}: no {SweepFolder.TABLE} there (give a sweep directory: OUTPUT_DIR/SWEEP_NAME)")
    attempts = 1
    while True:
        newer = row_files(fs, path)  # listed before the table is read: the table is then at least as new
        with fs.open_input_file(path) as source:
            table = pq.read_table(source)
        try:
            return _with_rows(fs, table, newer)
        except FileNotFoundError:  # the driver rewrote the table meanwhile and removed the row files it now holds
            if attempts == READ_ATTEMPTS:
                raise
            attempts += 1


READ_ATTEMPTS = 5


def fold_rows(location: str) -> pa.Table:
    """The table of a sweep directory with its row files folded in: rewritten once if there are any (a killed
    driver's), so that results.parquet alone holds every row again. Returns the table."""
    fs, path = filesystem_and_path(f"{location.rstrip('/')}/{SweepFolder.TABLE}")
    leftover = row_files(fs, path)
    table = read_table(location)
    if leftover:
        write_table(table.to_pylist(), table.schema, fs, path, leftover)
    return table


def _with_rows(fs: pafs.FileSystem, table: pa.Table, row_files: Sequence[str]) -> pa.Table:
    if not row_files:
        return table
    rows = {row_key(row): row for row in table.to_pylist()}
    for row_file in row_files:
        with fs.open_input_file(row_file) as source:
            rows.update((row_key(row), row) for row in pq.read_table(source).to_pylist())
    search_first = sorted(rows.values(), key=lambda row: row_key(row)[0] == Stage.CONFIRM)
    return pa.Table.from_pylist(search_first, schema=table.schema)


def row_key(row: Dict[str, Any]) -> Tuple[str, str]:
    """What identifies a row: its stage (two Tune experiments, each naming its own trials) and its trial."""
    return row.get("stage") or Stage.SEARCH, row["trial_id"]
