"""One NESS (or fine-tuning) run without Ray: ``python -m ness_sweep.train [key=value ...]``.

Prints progress per epoch and task, then the accuracy matrix, ACC, BWT, forgetting and the ranks
chosen per layer; ``output=PATH`` writes the result as JSON. ``seeds=[1,2,3]`` runs the seeds in turn
and reports mean ± std. Bad input exits with code 2 before any work starts.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import List, Optional

from .config import ConfigError, RunConfig, help_text, load_run_config, resolved
from .data import stream_for
from .trainer import Trainer

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
    result = Trainer(cfg, stream, log=log).run().to_dict()
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


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE + help_text(RunConfig))
        return 0
    try:
        cfg = load_run_config(argv)
        if cfg.output and Path(cfg.output).is_dir():
            raise ConfigError(f"output={cfg.output}: is a directory; give a file path for the JSON result")
        seeds = list(cfg.seeds) if cfg.seeds is not None else [cfg.seed]
        first_stream = stream_for(cfg, seeds[0])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs = []
    for i, seed in enumerate(seeds):
        print(f"== {cfg.method} on {cfg.benchmark}, seed {seed}")
        runs.append(run_seed(cfg, seed, first_stream if i == 0 else None))
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
        path = Path(cfg.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(output, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
