"""One run of a method without Ray: ``python -m ness_sweep.train [key=value ...]``.

Prints progress per epoch and task, then the accuracy matrix, ACC, BWT, forgetting and the method's
per-task diagnostics (NESS: the rank chosen per layer); ``output=PATH`` writes the result as JSON.
``seeds=[1,2,3]`` runs the seeds in turn and reports mean ± std. ``threads`` pins torch's CPU threads, so a run
reruns to the same digits. Bad input exits with code 2 before any work starts (nothing trained, nothing written);
a run whose loss diverges ends with one line and exit code 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch

from . import callable_module
from .benchmarks import check_benchmark, stream_for
from .config import RunConfig, UserError, arguments, help_text, load_run_config, resolved
from .methods import check_fits, check_run, groups_help, make_trainer, method_groups, registered_names
from .metrics import FINAL, VALID, mean_std, on_split
from .models import build_model, check_model, model_label
from .user_code import check_model_trains

USAGE = """usage: python -m ness_sweep.train [key=value ...]

Train one model through a task stream with a continual-learning method: NESS (method=ness), fine-tuning,
GPM, SGP, EWC, LwF, or your own (method=module:Class). Keys and their defaults:
"""


def run_seed(cfg, seed: int, stream=None, log: Optional[Callable[[str], None]] = print) -> dict:
    """One run of the config with the given seed (its stream, if already loaded); a plain dict."""
    cfg = cfg.copy()
    cfg.seed = seed
    if stream is None:
        stream = stream_for(cfg, seed)
    result = make_trainer(cfg, stream, log=log).run().to_dict()
    result["seed"] = seed
    return result


@dataclass
class TrainResult:
    """What ``ness_sweep.train(...)`` returns: one result per seed, their mean (and std with several seeds)
    of ACC, BWT and forgetting, and the resolved settings that reproduce them."""

    runs: List[dict]  # per seed: acc, bwt, forgetting, their valid_* twins, both matrices, diagnostics, ...
    config: dict  # every setting, resolved: the run's preset

    def _mean_std(self, key: str) -> Tuple[float, float]:
        return mean_std([run[key] for run in self.runs])

    @property
    def acc(self) -> float:
        return self._mean_std("acc")[0]

    @property
    def bwt(self) -> float:
        return self._mean_std("bwt")[0]

    @property
    def forgetting(self) -> float:
        return self._mean_std("forgetting")[0]

    def to_dict(self) -> dict:
        """The JSON ``output=`` writes: a run's own fields with one seed; ``runs`` and mean/std with several."""
        output = dict(self.runs[0]) if len(self.runs) == 1 else {"runs": self.runs}
        if len(self.runs) > 1:
            for key in [*FINAL, *(on_split(metric, VALID) for metric in FINAL)]:
                output[key], output[f"{key}_std"] = self._mean_std(key)
        output["config"] = self.config
        return output


def train(*args: str, out: Optional[Callable[[str], None]] = print, **settings: Any) -> TrainResult:
    """Train with the command line's settings: ``key=value`` strings, keyword arguments, or both
    (``train("method=finetune", seeds=[1, 2], train={"epochs": 5})``; dotted keys as ``**{"train.lr": 0.1}``).

    Everything is checked before any work: bad input raises ``UserError`` (one line) with nothing trained,
    downloaded or written. A diverging loss raises ``FloatingPointError``. ``out`` receives the progress
    lines (per epoch, per task, per seed); ``out=None`` trains silently. Writes ``output=`` when given.
    """
    if out is not None and not callable(out):
        raise UserError(f"out={out!r}: must be a function that takes each progress line (such as print), or None")
    say = out or (lambda line: None)
    cfg = load_run_config([*args, *arguments(settings, args)], groups=method_groups)
    check_benchmark(cfg.benchmark)
    check_model(cfg.model)
    check_run(cfg)
    if cfg.output:
        check_output(cfg.output)
    apply_threads(cfg.threads)
    seeds = list(cfg.seeds) if cfg.seeds is not None else [cfg.seed]
    first_stream = stream_for(cfg, seeds[0])
    check_fits(cfg, first_stream)
    check_model_trains(build_model(cfg.model, first_stream), first_stream, cfg.train.batch_size,
                       model_label(cfg, first_stream))
    runs = []
    for i, seed in enumerate(seeds):
        say(f"== {cfg.method} on {cfg.benchmark}, seed {seed}")
        try:
            runs.append(run_seed(cfg, seed, first_stream if i == 0 else None, log=out))
        except FloatingPointError as error:  # a diverging loss: an outcome of the settings, not a crash
            raise FloatingPointError(f"seed {seed}: {error}") from None
        say(summary(runs[-1]))
    result = TrainResult(runs, resolved(cfg))
    if len(runs) > 1:
        say("seeds " + ", ".join(f"{r['seed']}: ACC {r['acc']:.2f} BWT {r['bwt']:.2f}" for r in runs))
        output = result.to_dict()
        say(f"mean ± std over {len(runs)} seeds: ACC {output['acc']:.2f} ± {output['acc_std']:.2f}  "
            f"BWT {output['bwt']:.2f} ± {output['bwt_std']:.2f}")
    if cfg.output:
        path = Path(cfg.output).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_dict(), indent=2))
        say(f"wrote {path}")
    return result


def format_matrix(matrix) -> str:
    lines = ["accuracy matrix (row i: after task i; column j: task j)"]
    for i, row in enumerate(matrix):
        lines.append(f"  after {i + 1:>2}: " + " ".join("   -  " if a is None else f"{a:6.2f}" for a in row))
    return "\n".join(lines)


def format_diagnostics(diagnostics: List[dict]) -> str:
    """The method's per-task numbers, one line per task that has any (none for fine-tuning)."""
    lines = [f"  task {i + 1}: " + ", ".join(f"{k}={v:g}" for k, v in d.items())
             for i, d in enumerate(diagnostics) if d]
    return "diagnostics per task\n" + "\n".join(lines) + "\n" if lines else ""


def summary(result: dict) -> str:
    return (f"{format_matrix(result['acc_matrix'])}\n{format_diagnostics(result['diagnostics'])}"
            f"seed {result['seed']}: ACC {result['acc']:.2f}  BWT {result['bwt']:.2f}  "
            f"forgetting {result['forgetting']:.2f}  (validation: ACC {result['valid_acc']:.2f}  "
            f"BWT {result['valid_bwt']:.2f})  ({result['seconds']:.1f} s)")


def apply_threads(threads: int) -> None:
    """Pin torch's CPU threads before any torch work: their count splits float sums, hence the last digits.

    The inter-op pool (independent ops side by side: CPU use, not numbers) can be sized only once per
    process, before it starts; a second run in the same process keeps the first one's.
    """
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        with contextlib.suppress(RuntimeError):  # started already in this process: it keeps its size
            torch.set_num_interop_threads(threads)


def check_output(output: str) -> None:
    """The JSON result must be writable before training, not lost after it. Creates nothing: the nearest
    existing folder gets a temporary file, removed at once (root ignores permission bits, so no os.access)."""
    path = Path(output).expanduser().absolute()
    if os.path.isdir(path):  # os.path: a name too long for the file system is False, not an error
        raise UserError(f"output={output}: is a directory; give a file path for the JSON result")
    if os.path.exists(path):
        try:
            open(path, "a").close()  # appending nothing leaves the file as it was
        except OSError as error:
            raise UserError(f"output={output}: cannot write this file ({error.strerror})") from None
        return
    folder = next(parent for parent in path.parents if os.path.exists(parent))
    if not folder.is_dir():
        raise UserError(f"output={output}: {folder} is a file, not a folder")
    limit = os.pathconf(folder, "PC_NAME_MAX")
    if any(len(os.fsencode(part)) > limit for part in path.relative_to(folder).parts):
        raise UserError(f"output={output}: a name in the path is longer than {limit} bytes")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise UserError(f"output={output}: cannot create files in {folder} ({error.strerror})") from None


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE + help_text(RunConfig) + "\n" + groups_help() + "\n" + registered_names())
        return 0
    try:
        train(*argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


callable_module(__name__, train)

if __name__ == "__main__":
    sys.exit(main())
