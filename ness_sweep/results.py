"""The sweep's results table: one Parquet row per trial, and what is read from it afterwards.

The table is the record of a sweep: ``ness_sweep.report`` rebuilds the leaderboard, the Pareto front and
the command that reruns the best configuration from it alone. Its schema is explicit: fixed columns
below, one column per run-config key (``train.lr``, ``ness.rank``, ...) typed by the sweep, and JSON
metadata under ``ness_sweep`` naming the sweep, its metrics and modes, and the searched keys.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import uuid
from typing import Any, Dict, List, Sequence, Tuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from .config import UserError, flatten

RESULTS_FILE = "results.parquet"
BEST_CONFIG_FILE = "best.yaml"
METADATA_KEY = b"ness_sweep"

# Columns before the config columns: who the trial is and where it ran.
ID_COLUMNS = [
    ("trial_id", pa.string()),
    ("status", pa.string()),  # TERMINATED, STOPPED (by the scheduler), DIVERGED, ERROR; unfinished: PENDING,
    # RUNNING, PAUSED while the sweep runs, UNFINISHED after an interrupt
    ("node_ip", pa.string()),
    ("node_id", pa.string()),
]
# Columns after the config columns: what the trial measured (means over its seeds; *_std when several).
METRIC_COLUMNS = [
    ("seeds", pa.list_(pa.int64())),
    ("task", pa.int64()),  # tasks finished
    ("acc_seen", pa.float64()),
    ("acc_seen_per_task", pa.list_(pa.float64())),  # acc_seen after each finished task: where ASHA stopped it
    ("acc", pa.float64()),
    ("acc_std", pa.float64()),
    ("bwt", pa.float64()),
    ("bwt_std", pa.float64()),
    ("forgetting", pa.float64()),
    ("forgetting_std", pa.float64()),
    ("acc_matrix", pa.list_(pa.list_(pa.float64()))),  # R[i][j], null above the diagonal
    ("ranks", pa.list_(pa.map_(pa.string(), pa.int64()))),  # per task, layer -> rank (the first seed's)
    ("trainable_params", pa.list_(pa.int64())),  # per task (the first seed's)
    ("seconds", pa.float64()),  # training time, summed over seeds
    ("error", pa.string()),
    ("started_at_task", pa.int64()),  # where the trial's last attempt began: > 0 after a restart or resume
    ("recovery", pa.string()),  # set when an unreadable checkpoint was passed over: what the trial continued from
]
FINISHED = "TERMINATED"
ENDED = (FINISHED, "STOPPED", "DIVERGED", "ERROR")  # the other statuses mean unfinished (resume=true continues)


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
            raise UserError(f"{location}: not a usable location: {str(error).splitlines()[0]}") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_atomically(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write to a temporary name, then rename: readers never see a half-written file."""
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(temporary) as stream:
        stream.write(data)
    fs.move(temporary, path)


def write_table(rows: List[Dict[str, Any]], schema: pa.Schema, fs: pafs.FileSystem, path: str) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomically(fs, path, sink.getvalue().to_pybytes())


def read_table(location: str) -> pa.Table:
    """The table of a sweep directory (or of the Parquet file itself), local or URI."""
    fs, path = filesystem_and_path(location)
    if not path.endswith(".parquet"):
        path = f"{path.rstrip('/')}/{RESULTS_FILE}"
    if not exists(fs, path):
        raise UserError(f"{location}: no {RESULTS_FILE} there (give a sweep directory: OUTPUT_DIR/SWEEP_NAME)")
    with fs.open_input_file(path) as source:
        return pq.read_table(source)


# ---- ranking ---------------------------------------------------------------------------------

def _has_metrics(row: Dict[str, Any], metrics: Sequence[str]) -> bool:
    return all(row.get(m) is not None and math.isfinite(row[m]) for m in metrics)


def _dominates(a: Dict[str, Any], b: Dict[str, Any], metrics: Sequence[str], modes: Sequence[str]) -> bool:
    """a is at least as good as b on every objective and better on one."""
    sign = [1 if mode == "max" else -1 for mode in modes]
    better_or_equal = all(s * a[m] >= s * b[m] for m, s in zip(metrics, sign))
    return better_or_equal and any(s * a[m] > s * b[m] for m, s in zip(metrics, sign))


def pareto_front(rows: List[Dict[str, Any]], metrics: Sequence[str], modes: Sequence[str]) -> List[Dict[str, Any]]:
    """Finished rows no other finished row dominates, best first by the first objective."""
    done = [r for r in rows if _has_metrics(r, metrics)]
    front = [r for r in done if not any(_dominates(o, r, metrics, modes) for o in done)]
    return sorted(front, key=lambda r: -r[metrics[0]] if modes[0] == "max" else r[metrics[0]])


def ranked(rows: List[Dict[str, Any]], metric: str, mode: str) -> List[Dict[str, Any]]:
    """Finished rows, best first."""
    done = [r for r in rows if _has_metrics(r, [metric])]
    return sorted(done, key=lambda r: -r[metric] if mode == "max" else r[metric])


def best_rows(table: pa.Table) -> List[Dict[str, Any]]:
    """The leaderboard's rows: ranked by the metric, or the Pareto front for several objectives."""
    meta = sweep_metadata(table)
    rows = table.to_pylist()
    if len(meta["metrics"]) > 1:
        return pareto_front(rows, meta["metrics"], meta["modes"])
    return ranked(rows, meta["metrics"][0], meta["modes"][0])


# ---- rerunning the best ----------------------------------------------------------------------

def _yaml_scalar(value: Any) -> str:
    """A value as the command line parses it back to the same type (floats keep full precision)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_yaml_scalar(v) for v in value) + "]"
    return str(value)


def run_settings(row: Dict[str, Any], table: pa.Table) -> Dict[str, Any]:
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
    from .config import RunConfig  # the schema defaults, to leave out what a rerun gets anyway

    defaults = flatten(OmegaConf.to_container(OmegaConf.structured(RunConfig)))
    meta = sweep_metadata(table)
    always = ("benchmark", "seed", "seeds", "threads", "device", *meta["searched"])
    parts = [f"{key}={_yaml_scalar(value)}" for key, value in run_settings(row, table).items()
             if key in always or defaults.get(key, object()) != value]
    return shlex.join(["python", "-m", "ness_sweep.train", *parts])


def best_config_yaml(row: Dict[str, Any], table: pa.Table) -> str:
    """The trial's full run config as YAML, usable as ``ness_sweep.train preset=best.yaml``."""
    nested: Dict[str, Any] = {}
    for key, value in run_settings(row, table).items():
        node = nested
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return OmegaConf.to_yaml(OmegaConf.create(nested))


# ---- printing --------------------------------------------------------------------------------

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
