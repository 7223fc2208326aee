"""One NESS (or fine-tuning) run without Ray: ``python -m ness_sweep.train [key=value ...]``.

Prints progress per epoch and task, then the accuracy matrix, ACC, BWT, forgetting and the ranks
chosen per layer; ``output=PATH`` writes the result as JSON. ``seeds=[1,2,3]`` runs the seeds in turn
and reports mean ± std. ``threads`` pins torch's CPU threads, so a run reruns to the same digits.
Bad input exits with code 2 before any work starts (nothing trained, nothing written); a run whose
loss diverges ends with one line and exit code 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import torch

from .config import UserError, RunConfig, help_text, load_run_config, resolved
from .data import TaskStream, stream_for
from .models import build_model
from .trainer import check_method, make_trainer

USAGE = """usage: python -m ness_sweep.train [key=value ...]

Train one model through a task stream with NESS (method=ness) or plain fine-tuning (method=finetune).
Keys and their defaults:
"""


def run_seed(cfg, seed: int, stream=None, log=print) -> dict:
    """One run of the config with the given seed (its stream, if already loaded); a plain dict."""
    cfg = cfg.copy()
    cfg.seed = seed
    if stream is None:
        stream = stream_for(cfg, seed)
    result = make_trainer(cfg, stream, log=log).run().to_dict()
    result["seed"] = seed
    return result


def mean_std(values: List[float]) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_matrix(matrix) -> str:
    lines = ["accuracy matrix (row i: after task i; column j: task j)"]
    for i, row in enumerate(matrix):
        lines.append(f"  after {i + 1:>2}: " + " ".join("   -  " if a is None else f"{a:6.2f}" for a in row))
    return "\n".join(lines)


def summary(result: dict) -> str:
    ranks = "\n".join(f"  task {i + 1}: " + (", ".join(f"{k}={v}" for k, v in r.items()) or "all weights trained")
                      for i, r in enumerate(result["ranks"]))
    return (f"{format_matrix(result['acc_matrix'])}\nranks per layer\n{ranks}\n"
            f"seed {result['seed']}: ACC {result['acc']:.2f}  BWT {result['bwt']:.2f}  "
            f"forgetting {result['forgetting']:.2f}  ({result['seconds']:.1f} s)")


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


def check_model_fits(cfg, stream: TaskStream) -> None:
    """A model that cannot take the benchmark's inputs (alexnet on flat digits) fails while being built."""
    try:
        build_model(cfg.model, stream)
    except RuntimeError:
        raise UserError(f"model={cfg.model}: does not take benchmark={cfg.benchmark}'s inputs of shape "
                          f"{tuple(stream.input_shape)}; use model=auto ({stream.default_model})") from None


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE + help_text(RunConfig))
        return 0
    try:
        cfg = load_run_config(argv)
        check_method(cfg.method)
        if cfg.output:
            check_output(cfg.output)
        apply_threads(cfg.threads)
        seeds = list(cfg.seeds) if cfg.seeds is not None else [cfg.seed]
        first_stream = stream_for(cfg, seeds[0])
        check_model_fits(cfg, first_stream)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs = []
    for i, seed in enumerate(seeds):
        print(f"== {cfg.method} on {cfg.benchmark}, seed {seed}")
        try:
            runs.append(run_seed(cfg, seed, first_stream if i == 0 else None))
        except FloatingPointError as error:  # a diverging loss: an outcome of the settings, not a crash
            print(f"error: seed {seed}: {error}", file=sys.stderr)
            return 1
        print(summary(runs[-1]))
    output = dict(runs[0]) if len(runs) == 1 else {"runs": runs}
    if len(runs) > 1:
        for key in ("acc", "bwt", "forgetting"):
            mean, std = mean_std([r[key] for r in runs])
            output[key], output[f"{key}_std"] = mean, std
        print("seeds " + ", ".join(f"{r['seed']}: ACC {r['acc']:.2f} BWT {r['bwt']:.2f}" for r in runs))
        print(f"mean ± std over {len(runs)} seeds: ACC {output['acc']:.2f} ± {output['acc_std']:.2f}  "
              f"BWT {output['bwt']:.2f} ± {output['bwt_std']:.2f}")
    output["config"] = resolved(cfg)
    if cfg.output:
        path = Path(cfg.output).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(output, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
