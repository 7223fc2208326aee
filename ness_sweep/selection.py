"""The selection protocol (docs/concepts/selection.md): a sweep chooses on validation metrics, then reruns its best
configurations on fresh seeds; the winner is the confirmed configuration with the best confirmed validation
mean, and its headline is the confirmed test numbers, shown beside the search's.

Pure functions of the results table's rows (no Ray, no files): which search rows to confirm, what their
reruns measured, and the per-method comparison of a sweep over methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from .metrics import mean_std
from .results import Stage, Status

Row = Dict[str, Any]


def _has_metrics(row: Row, metrics: Sequence[str]) -> bool:
    return all(row.get(m) is not None and math.isfinite(row[m]) for m in metrics)


def _dominates(a: Row, b: Row, metrics: Sequence[str], modes: Sequence[str]) -> bool:
    """a is at least as good as b on every objective and better on one."""
    sign = [1 if mode == "max" else -1 for mode in modes]
    better_or_equal = all(s * a[m] >= s * b[m] for m, s in zip(metrics, sign))
    return better_or_equal and any(s * a[m] > s * b[m] for m, s in zip(metrics, sign))


def pareto_front(rows: List[Row], metrics: Sequence[str], modes: Sequence[str]) -> List[Row]:
    """Finished rows no other finished row dominates, best first by the first objective."""
    done = [r for r in rows if _has_metrics(r, metrics)]
    front = [r for r in done if not any(_dominates(o, r, metrics, modes) for o in done)]
    return sorted(front, key=lambda r: -r[metrics[0]] if modes[0] == "max" else r[metrics[0]])


def ranked(rows: List[Row], metric: str, mode: str) -> List[Row]:
    """Finished rows, best first."""
    done = [r for r in rows if _has_metrics(r, [metric])]
    return sorted(done, key=lambda r: -r[metric] if mode == "max" else r[metric])


def stage_rows(rows: Sequence[Row], stage: str) -> List[Row]:
    """The rows of one stage (a table written before stages existed holds search rows only)."""
    return [row for row in rows if (row.get("stage") or Stage.SEARCH) == stage]


def leaderboard_order(rows: List[Row], metrics: Sequence[str], modes: Sequence[str]) -> List[Row]:
    """The leaderboard's order: finished rows by the objective, or the Pareto front for several objectives."""
    return pareto_front(rows, metrics, modes) if len(metrics) > 1 else ranked(rows, metrics[0], modes[0])


def fresh_seeds(used: Sequence[int], count: int) -> List[int]:
    """``count`` seeds no search trial used: the ones after the largest it could have used."""
    start = max(used) + 1
    return list(range(start, start + count))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def best_first(rows: Sequence[Row], metrics: Sequence[str], modes: Sequence[str]) -> List[Row]:
    """Finished search rows, best first: by the objective, or for several objectives the Pareto front (by the
    first) followed by the rest (by the first)."""
    done = [row for row in stage_rows(rows, Stage.SEARCH) if all(_finite(row.get(m)) for m in metrics)]
    order = ranked(done, metrics[0], modes[0])
    if len(metrics) == 1:
        return order
    front = pareto_front(done, metrics, modes)
    chosen = {id(row) for row in front}
    return front + [row for row in order if id(row) not in chosen]


def to_confirm(rows: Sequence[Row], metrics: Sequence[str], modes: Sequence[str], top: int,
               settings: Sequence[str], by_method: bool) -> List[Row]:
    """The search rows to rerun on fresh seeds: the ``top`` best (``best_first``) of distinct settings (the
    ``settings`` columns, the seed aside: a rerun replaces it), per method when ``by_method``."""
    chosen: List[Row] = []
    seen, per_method = set(), {}
    for row in best_first(rows, metrics, modes):
        key = tuple(repr(row.get(column)) for column in settings if column != "seed")
        group = row.get("method") if by_method else None
        if key in seen or per_method.get(group, 0) >= top:
            continue
        seen.add(key)
        per_method[group] = per_method.get(group, 0) + 1
        chosen.append(row)
    return chosen


@dataclass
class Confirmed:
    """A search row and its reruns on fresh seeds (finished or not)."""

    row: Row
    reruns: List[Row]

    @property
    def finished(self) -> List[Row]:
        return [rerun for rerun in self.reruns if rerun["status"] == Status.TERMINATED]

    @property
    def complete(self) -> bool:
        """Every rerun finished every task: a configuration that diverged or failed on a fresh seed is not robust."""
        return bool(self.reruns) and len(self.finished) == len(self.reruns)

    @property
    def seeds(self) -> List[int]:
        return sorted(seed for rerun in self.finished for seed in rerun["seeds"] or [])

    def mean_std(self, metric: str) -> Optional[tuple]:
        """The metric's mean and std over the finished reruns (one value per rerun seed), None without any."""
        values = [rerun[metric] for rerun in self.finished if _finite(rerun.get(metric))]
        return mean_std(values) if values else None

    @property
    def seconds(self) -> Optional[float]:
        """Seconds per run (one seed), from the reruns."""
        values = [rerun["seconds"] / max(1, len(rerun["seeds"] or [])) for rerun in self.finished]
        return sum(values) / len(values) if values else None


def confirmations(rows: Sequence[Row], metrics: Sequence[str], modes: Sequence[str]) -> List[Confirmed]:
    """Each confirmed search row with its reruns, the winner first: complete confirmations before the others,
    then by the confirmed mean of the first objective."""
    search = {row["trial_id"]: row for row in stage_rows(rows, Stage.SEARCH)}
    reruns: Dict[str, List[Row]] = {}
    for rerun in stage_rows(rows, Stage.CONFIRM):
        reruns.setdefault(rerun["confirms"], []).append(rerun)
    found = [Confirmed(search[trial_id], runs) for trial_id, runs in reruns.items() if trial_id in search]
    sign = -1 if modes[0] == "max" else 1

    def order(confirmed: Confirmed):
        value = confirmed.mean_std(metrics[0])
        return (not confirmed.complete, value is None, sign * value[0] if value else 0.0)

    return sorted(found, key=order)


def winner(rows: Sequence[Row], metrics: Sequence[str], modes: Sequence[str]) -> Optional[Confirmed]:
    """The confirmed configuration with the best confirmed mean of the first objective, if any finished."""
    found = [c for c in confirmations(rows, metrics, modes) if c.finished]
    return found[0] if found else None


@dataclass
class MethodLine:
    """One method of a sweep over methods: its trials, its winner by validation, and that winner's confirmation."""

    method: str
    trials: int  # its search trials: the same number for every method
    confirmed: Optional[Confirmed]  # its confirmed winner: the best confirmed mean of the objective


def per_method(rows: Sequence[Row], metrics: Sequence[str], modes: Sequence[str]) -> List[MethodLine]:
    """A sweep over methods, one line per method, the best confirmed first (methods without one last)."""
    search = stage_rows(rows, Stage.SEARCH)
    methods = list(dict.fromkeys(row["method"] for row in search))
    found = confirmations(rows, metrics, modes)
    lines = []
    for method in methods:
        confirmed = next((c for c in found if c.row["method"] == method and c.finished), None)
        lines.append(MethodLine(method, sum(row["method"] == method for row in search), confirmed))
    sign = -1 if modes[0] == "max" else 1

    def order(line: MethodLine):
        value = line.confirmed.mean_std(metrics[0]) if line.confirmed else None
        return (value is None, sign * value[0] if value else 0.0)

    return sorted(lines, key=order)


HEADLINE_METRICS = ("acc", "bwt")  # what a sweep's headline reports on test: the field's two numbers
